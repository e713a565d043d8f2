"""Per-official rate limits shared through the database: two pipelines (two gateway
processes) count against one limit, on SQLite and PostgreSQL; windows roll over; the
limit holds exactly under concurrent sends."""

from __future__ import annotations

import threading
from email.message import EmailMessage

from sqlalchemy import text

from identity.db import Database
from mailgw.model import Action, Sender, Submission
from mailgw.policy import MailPolicyPipeline, window_starts
from policies import MailPolicy

AN = Sender(sub="sub-an", username="an.nv", addresses=frozenset({"an.nv@phutho.gov.vn"}))
BINH = Sender(sub="sub-binh", username="binh.tt", addresses=frozenset({"binh.tt@phutho.gov.vn"}))
START = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # the start of a clock hour


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def submission(sender: Sender, recipients: int) -> Submission:
    mail = EmailMessage()
    address = next(iter(sender.addresses))
    mail["From"], mail["To"], mail["Subject"] = address, "x@phutho.gov.vn", "Thông báo"
    mail.set_content("Nội dung.\n")
    return Submission(mail_from=address, rcpt_tos=[f"u{i}@phutho.gov.vn" for i in range(recipients)],
                      data=mail.as_bytes(), sender=sender)


def test_two_gateways_share_one_hourly_limit(database: Database) -> None:
    clock = Clock(START + 10)
    policy = MailPolicy(recipients_per_hour=5, recipients_per_day=100)
    first, second = (MailPolicyPipeline(policy, database, clock=clock) for _ in range(2))
    assert first.judge(submission(AN, 3)).action is Action.ACCEPT
    assert second.judge(submission(AN, 2)).action is Action.ACCEPT
    refused = first.judge(submission(AN, 1))
    assert refused.reason == "mail.rate_limited" and refused.reply.startswith("451 4.7.1 ")
    assert "per hour" in refused.text and refused.details == {"window": "hour", "limit": 5}
    # The refusing process now answers MAIL FROM at once; the other one learns at DATA.
    assert first.check_sender("an.nv@phutho.gov.vn", AN).reason == "mail.rate_limited"
    assert second.check_sender("an.nv@phutho.gov.vn", AN).action is Action.ACCEPT
    assert second.judge(submission(AN, 1)).reason == "mail.rate_limited"
    # Another official has their own counter.
    assert second.judge(submission(BINH, 5)).action is Action.ACCEPT
    # The next hour starts afresh, for the hint too.
    clock.now = START + 3600
    assert first.check_sender("an.nv@phutho.gov.vn", AN).action is Action.ACCEPT
    assert first.judge(submission(AN, 5)).action is Action.ACCEPT


def test_daily_limit_and_both_windows_or_neither(database: Database) -> None:
    clock = Clock(START)
    policy = MailPolicy(recipients_per_hour=10, recipients_per_day=12)
    checker = MailPolicyPipeline(policy, database, clock=clock)
    assert checker.judge(submission(AN, 8)).action is Action.ACCEPT
    clock.now += 3600
    refused = checker.judge(submission(AN, 5))  # 8 + 5 > 12 for the day, fine for the hour
    assert refused.reason == "mail.rate_limited" and refused.details["window"] == "day"
    with database.engine.connect() as connection:
        hour = connection.execute(text(
            "SELECT recipients FROM mail_rate_counters WHERE sender_sub = 'sub-an' AND window_seconds = 3600 "
            "AND window_start = :start"), {"start": window_starts(clock.now)[3600]}).scalar()
    assert hour is None  # the refused message raised neither counter
    assert checker.judge(submission(AN, 4)).action is Action.ACCEPT
    # A day is a Viet Nam day: it ends at 17:00 UTC.
    day_start = window_starts(clock.now)[86400]
    assert (day_start + 7 * 3600) % 86400 == 0


def test_a_message_bigger_than_the_limit_does_not_block_smaller_ones(database: Database) -> None:
    checker = MailPolicyPipeline(MailPolicy(recipients_per_hour=5, recipients_per_day=0), database,
                                 clock=Clock(START))
    assert checker.judge(submission(AN, 6)).reason == "mail.rate_limited"
    assert checker.check_sender("an.nv@phutho.gov.vn", AN).action is Action.ACCEPT
    assert checker.judge(submission(AN, 1)).action is Action.ACCEPT


def test_concurrent_sends_never_pass_the_limit(database: Database) -> None:
    clock = Clock(START + 100)
    policy = MailPolicy(recipients_per_hour=10, recipients_per_day=0)
    pipelines = [MailPolicyPipeline(policy, database, clock=clock) for _ in range(2)]
    results: list[Action] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        verdict = pipelines[index % 2].judge(submission(AN, 1))
        with lock:
            results.append(verdict.action)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(Action.ACCEPT) == 10 and results.count(Action.REFUSE) == 6


def test_old_windows_are_pruned(database: Database) -> None:
    clock = Clock(START)
    checker = MailPolicyPipeline(MailPolicy(recipients_per_hour=5), database, clock=clock)
    checker.judge(submission(AN, 1))
    clock.now += 3 * 86400
    checker.judge(submission(AN, 1))
    with database.engine.connect() as connection:
        starts = connection.execute(text("SELECT window_start FROM mail_rate_counters")).scalars().all()
    assert min(starts) >= clock.now - 2 * 86400


def counters(database: Database) -> dict[tuple[str, int], int]:
    """The newest window's count per official and window length."""
    with database.engine.connect() as connection:
        return {(row.sender_sub, row.window_seconds): row.recipients for row in connection.execute(text(
            "SELECT sender_sub, window_seconds, recipients FROM mail_rate_counters ORDER BY window_start"))}


def test_one_batch_of_one_officials_messages_counts_as_one_by_one(database: Database) -> None:
    """The group commit's batch is counted per run of one official's requests at once when
    the sum fits, else request by request in order: the same results either way."""
    policy = MailPolicy(recipients_per_hour=10, recipients_per_day=12)
    checker = MailPolicyPipeline(policy, database, clock=Clock(START))
    an, binh = [("sub-an", 2, START)] * 3, [("sub-binh", 4, START)]
    # Everything fits: one upsert per window for An's three, then Binh's.
    assert checker._raise_counters(lambda: [[request] for request in [*an, *binh]]) == [0, 0, 0, 0]
    assert counters(database) == {("sub-an", 3600): 6, ("sub-an", 86400): 6,
                                  ("sub-binh", 3600): 4, ("sub-binh", 86400): 4}
    # 6 + 3 × 2 passes the hour's 10: one by one, the first two pass (8, 10), the third not.
    assert checker._raise_counters(lambda: [[("sub-an", 2, START)]] * 3) == [0, 0, 3600]
    assert (counters(database)[("sub-an", 3600)], counters(database)[("sub-an", 86400)]) == (10, 10)
    # The next hour: 2 + 1 passes the day's 12 (10 so far): the 2 passes, the 1 not; both
    # windows or neither, so the new hour counts 2. The day is full: MAIL FROM is told at once.
    assert checker._raise_counters(lambda: [[("sub-an", 2, START + 3600)], [("sub-an", 1, START + 3600)]]) \
        == [0, 86400]
    starts = window_starts(START + 3600)
    with database.engine.connect() as connection:
        hour = connection.execute(text(
            "SELECT recipients FROM mail_rate_counters WHERE sender_sub = 'sub-an' AND window_seconds = 3600 "
            "AND window_start = :start"), {"start": starts[3600]}).scalar()
    assert (hour, counters(database)[("sub-an", 86400)]) == (2, 12)
    assert checker.check_sender("an.nv@phutho.gov.vn", AN).reason == "mail.rate_limited"
    # Interleaved officials, each run on its own: Binh's 3 + 4 pass his 6 left in the hour
    # together, so one by one: 3 passes, 4 not; Carol's 1 passes; then Binh's 1 passes.
    mixed = [("sub-binh", 3, START), ("sub-binh", 4, START), ("sub-carol", 1, START), ("sub-binh", 1, START)]
    assert checker._raise_counters(lambda: [[request] for request in mixed]) == [0, 3600, 0, 0]
    assert (counters(database)[("sub-binh", 3600)], counters(database)[("sub-carol", 3600)]) == (4 + 3 + 1, 1)
