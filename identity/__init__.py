"""congvu's identity server: the OpenID provider of the province's applications."""

from identity.app import create_app

__all__ = ["create_app"]
