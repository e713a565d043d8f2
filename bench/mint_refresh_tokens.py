"""Mint congvu refresh tokens for the refresh-grant benchmark.

A refresh token is good for one use (congvu rotates them), and getting each one through
a real login and authorization-code exchange would take far longer than the benchmark
itself. So the tokens are written with the calls the sign-in and the token endpoint
use: per token a grant from `identity.oidc.tokens.start_grant` (one authorization of one
user, made in that user's SSO session) and a refresh token from
`TokenService.new_refresh_token`. They are written before the run, while the server is
idle.

    mint(data_dir, client_id, count) -> list[str]

Also a command for bench/run_oidc.py, which runs it in a child process so that congvu's
modules are never imported into the harness:

    .venv/bin/python bench/mint_refresh_tokens.py --data DIR --client-id ID --count N --out FILE

The SSO session rows are written here too: `identity.sso.start_session` needs a
browser request, and these sign-ins never had one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Importable without `pip install -e`, from any working directory.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The scope an interactive sign-in with offline access would have been granted.
GRANT_SCOPE = "openid profile offline_access"
# Tokens are spread over this many users, so the refresh benchmark does not hit one user
# row (and its cache lines, its index page) for every request.
USER_POOL = 200
# Rows written per transaction: large enough to be quick, small enough to keep the
# SQLite write lock and the session's memory short.
BATCH = 2000


def mint(data_dir: str, client_id: str, count: int) -> list[str]:
    """`count` fresh, unused refresh tokens of `client_id`, each from its own grant."""
    from identity.accounts import create_user, find_user
    from identity.app import build_services
    from identity.config import load_config
    from identity.credentials import new_token, token_hash
    from identity.models import Client, SsoSession, User
    from identity.oidc.tokens import start_grant

    services = build_services(load_config(data_dir))
    tokens_service = services.tokens

    now = int(time.time())
    with services.database.session() as session:
        client = session.get(Client, client_id)
        if client is None:
            raise ValueError(f"no client {client_id!r} in {data_dir}")
        allowed = set(client.scope.split())
        scope = " ".join(s for s in GRANT_SCOPE.split() if s in allowed)
        if "offline_access" not in scope.split():
            raise ValueError(f"client {client_id!r} may not have offline_access")
        # One user and one SSO session (a password sign-in) per pool slot.
        sso_ids = []
        for i in range(min(USER_POOL, count)):
            username = f"bench-refresh-{i}"
            user = find_user(session, username)
            if user is None:
                # No password: these accounts can never sign in.
                user = create_user(session, services.passwords, username=username,
                                   password=None, name=f"Benchmark user {i}")
            sso = SsoSession(
                id_hash=token_hash(new_token(32)), sid=new_token(16), user_id=user.id,
                auth_time=now, amr=["pwd"], acr=None, created_at=now, last_seen_at=now,
                ended_at=None, ip="127.0.0.1", user_agent="congvu-bench",
            )
            session.add(sso)
            session.flush()
            sso_ids.append((user.id, sso.id_hash))

    values: list[str] = []
    while len(values) < count:
        with services.database.session() as session:
            for i in range(len(values), min(count, len(values) + BATCH)):
                user_id, sso_id = sso_ids[i % len(sso_ids)]
                # After the first use in a batch both come from the session's identity map.
                sso = session.get(SsoSession, sso_id)
                user = session.get(User, user_id)
                grant = start_grant(session, user=user, client_id=client_id, scope=scope,
                                    sso=sso, now=now)
                values.append(tokens_service.new_refresh_token(session, grant, scope, now=now))
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="congvu instance folder (CONGVU_DATA_DIR)")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True, help="file to write, one token per line")
    args = parser.parse_args(argv)
    os.environ.setdefault("CONGVU_DATA_DIR", args.data)
    values = mint(args.data, args.client_id, args.count)
    Path(args.out).write_text("\n".join(values) + "\n", encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main())
