"""The signing step of an accepted message: S/MIME where configured or required, then
DKIM (Ed25519 and RSA-2048) outermost, so that the DKIM signatures cover the bytes that
leave the gateway.

    signer = OutboundSigner.from_database(database, config)   # once, at gateway start
    data = signer.sign(submission.data, sender_domain="phutho.gov.vn",
                       sender_address="an.nv@phutho.gov.vn", encrypt_for=verdict.encrypt_for)

`sign` touches neither the database nor the disk per message: DKIM keys are opened once
and the selector list is re-read every `keys.cache_seconds` (a `congvu dkim rotate`
elsewhere is picked up within it); S/MIME certificates are cached the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keys.dkim import DkimKeys, SigningKey, normalise_domain
from mailgw import dkim, smime
from mailgw.model import Verdict

log = logging.getLogger(__name__)


class SigningError(Exception):
    """The message cannot leave as required. `verdict` is the refusal the SMTP session
    replies with and audits (`mail.refused` with this reason code)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.text)
        self.verdict = verdict


def configured_domains(config: Any) -> list[str]:
    """`dkim.domains` as normalised DNS names, in the order given (the first is the fallback)."""
    return list(dict.fromkeys(normalise_domain(d) for d in config["dkim.domains"].split(",") if d.strip()))


def smime_folder(config: Any) -> Path:
    configured = config["smime.dir"]
    if not configured:
        return Path(config.data_dir) / "smime"
    path = Path(configured)
    return path if path.is_absolute() else Path(config.data_dir) / path


class OutboundSigner:
    def __init__(self, dkim_keys: DkimKeys, domains: Sequence[str],
                 certificates: smime.CertificateFolder | None = None) -> None:
        if not domains:
            raise ValueError("dkim.domains is empty: every outbound message must be DKIM-signed")
        self.dkim_keys = dkim_keys
        self.domains = list(domains)
        self.certificates = certificates

    @classmethod
    def from_database(cls, database: Any, config: Any, *, audit_log: Any = None) -> OutboundSigner:
        """The signer of a gateway process; makes the selectors of `dkim.domains` that do
        not exist yet (first start) and audits each one made."""
        from identity.keystore import DatabaseDkimKeyStore

        keys = DkimKeys(DatabaseDkimKeyStore(database), config.master_key,
                        cache_seconds=config["keys.cache_seconds"],
                        publish_grace=config["dkim.publish_grace_seconds"],
                        retired_keep=config["dkim.retired_keep_seconds"])
        domains = configured_domains(config)
        made = keys.ensure_initialised(domains)
        if made:
            record_generated(database, config, made, audit_log=audit_log, actor="mailgw")
            log.warning("DKIM selectors generated for %s: publish `congvu dkim dns` in DNS",
                        ", ".join(sorted({r.domain for r in made})))
        return cls(keys, domains, smime.CertificateFolder(smime_folder(config)))

    def keys_for(self, sender_domain: str) -> tuple[SigningKey, ...]:
        """The sender's domain's current selectors, else the nearest parent domain's (a
        parent d= still aligns for DMARC's relaxed mode), else the first configured
        domain's (the message is still signed, only not aligned)."""
        domain = sender_domain.strip().rstrip(".").lower()
        labels = domain.split(".")
        for candidate in [".".join(labels[i:]) for i in range(len(labels) - 1)] + self.domains[:1]:
            keys = self.dkim_keys.signing_keys(candidate)
            if keys:
                return keys
        # Temporary: `congvu dkim generate` (or the next start) fixes it; never send unsigned.
        raise SigningError(Verdict.refuse("mail.dkim_unavailable", 451, "4.3.5",
                                          "Signing keys unavailable, try again later"))

    def sign(self, data: bytes, *, sender_domain: str, sender_address: str,
             encrypt_for: Sequence[str] = ()) -> bytes:
        """S/MIME (sign with the sender's or domain's certificate if there is one; encrypt
        to every address in `encrypt_for`, all or nothing), then both DKIM signatures."""
        keys = self.keys_for(sender_domain)
        if self.certificates is not None:
            recipients = []
            for address in encrypt_for:
                certificate = self.certificates.recipient_certificate(address)
                if certificate is None:
                    # The policy required encryption: never send it in the clear instead.
                    raise SigningError(Verdict.refuse(
                        "mail.recipient_certificate_unknown", 550, "5.7.1",
                        "No certificate known for a recipient; the message must be encrypted"))
                recipients.append(certificate)
            signer = self.certificates.signer_for(sender_address or sender_domain)
            data = smime.protect(data, signer=signer, recipients=recipients)
        elif encrypt_for:
            raise SigningError(Verdict.refuse(
                "mail.recipient_certificate_unknown", 550, "5.7.1",
                "No certificate known for a recipient; the message must be encrypted"))
        try:
            return dkim.sign(data, keys)
        except dkim.DkimFormatError:
            raise SigningError(Verdict.refuse(
                "mail.malformed", 550, "5.6.0", "Message header is malformed (a From: field is required)"
            )) from None

    @property
    def notice_domain(self) -> str:
        """The domain the gateway's own messages (DSN bounces) come from: the first of
        `dkim.domains`, so their DKIM signature aligns with their From:."""
        return self.domains[0]

    def sign_notice(self, data: bytes) -> bytes:
        """A message the gateway itself writes (a DSN bounce, From: MAILER-DAEMON at
        `notice_domain`): both DKIM signatures, and no S/MIME, which would wrap the report
        in multipart/signed and hide it from the mail programs that read DSNs."""
        return dkim.sign(data, self.keys_for(self.notice_domain))

    def can_encrypt_for(self, addresses: Sequence[str]) -> bool:
        """Whether `sign(..., encrypt_for=addresses)` would find every certificate."""
        return self.certificates is not None and self.certificates.can_encrypt_for(tuple(addresses))


def record_generated(database: Any, config: Any, made: Sequence[Any], *, audit_log: Any = None,
                     actor: str) -> None:
    """One `dkim.key_generated` audit record per new selector (never key material)."""
    from identity.audit.log import AuditEntry, AuditLog

    log_ = audit_log or AuditLog(database, config.master_key,
                                 checkpoint_every=config["audit.checkpoint_every"],
                                 checkpoint_seconds=config["audit.checkpoint_seconds"])
    log_.append_many([AuditEntry("dkim.key_generated", "success", actor_username=actor,
                                 target=f"{r.selector}._domainkey.{r.domain}", reason="dkim.first_start",
                                 details={"algorithm": r.algorithm, "state": r.state})
                      for r in made])
