"""The official-mail gateway (aiosmtpd). Not built yet: see the issue "Official-mail
gateway". It will reach identity/ only through a small service interface
(authenticate a password or app password, validate an access token, look up an
official), never through its views."""
