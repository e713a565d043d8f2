"""The official-mail gateway (`congvu mailgw serve`), on aiosmtpd.

server.py (listeners, TLS, the session glue) → auth.py (SASL PLAIN, LOGIN, OAUTHBEARER,
XOAUTH2) → policy.py (policies/mail.py; attachments.py, quarantine.py) → signing.py
(smime.py, then dkim.py) → queue.py (durable before the 250) → delivery.py (relay,
retries, dsn.py bounces). The shared data is in model.py. identity/ is reached only
through identity/mail_service.py (authenticate a password or app password, validate an
access token, look up an official), never through its views. docs/mail-gateway.md.
"""
