"""What `congvu demo` sets up: demo accounts and the example applications' clients.

A newcomer runs `./dev.sh demo`, then the commands it prints, and has the provider and the
three example applications (examples/) talking to each other: sign in once, every
application signed in; sign out in one, all signed out. For that each example client is
registered here exactly as examples/README.md registers it by hand (callback, where to
come back after signing out, the back-channel logout URI, and what the portal shows).

Kept apart from identity/cli.py so that a test can run the same set-up against a live
provider on free ports (tests/examples/test_demo_setup.py) without starting gunicorn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from identity.accounts import create_user, find_user
from identity.client_settings import apply_client_settings
from identity.clients import register_client, rotate_secret
from identity.models import Client

if TYPE_CHECKING:
    from identity.services import Services

DEMO_PASSWORD = "Thu-nghiem-2026!"  # noqa: S105 - a published demo password, loopback only
# The demo official's groups include those the example applications might be limited to.
DEMO_ACCOUNTS = (
    ("canbo.demo", "Nguyễn Thị Hương", ["so-noi-vu", "can-bo"], False),
    ("quantri.demo", "Trần Văn Quản", ["quan-tri"], True),
)


@dataclass(frozen=True)
class DemoApplication:
    """An example application and the client it is registered as."""

    client_id: str
    name: str
    description: str
    base_url: str
    module: str  # started with `python -m MODULE`
    env_prefix: str  # its settings: PREFIX_CLIENT_SECRET, ...
    single_logout: bool  # has a back-channel logout endpoint and a signed-out page

    @property
    def post_logout_redirect_uri(self) -> str:
        # demo_rp comes back to its home page; the two SSO examples have a signed-out page.
        return f"{self.base_url}/signed-out" if self.single_logout else f"{self.base_url}/"

    @property
    def backchannel_logout_uri(self) -> str | None:
        return f"{self.base_url}/backchannel-logout" if self.single_logout else None

    def portal_settings(self) -> dict[str, str]:
        """What the application portal (/portal) shows and where its card leads."""
        return {"description": self.description, "client_uri": f"{self.base_url}/",
                "initiate_login_uri": f"{self.base_url}/login"}

    def start_command(self, issuer: str, secret: str) -> str:
        if self.env_prefix == "DEMO":  # examples/demo_rp reads its own two variables
            return (f"CONGVU_ISSUER={issuer} DEMO_CLIENT_SECRET={secret} "
                    f".venv/bin/python examples/demo_rp/app.py")
        port = self.base_url.rsplit(":", 1)[1]
        return (f"CONGVU_ISSUER={issuer} {self.env_prefix}_CLIENT_ID={self.client_id} "
                f"{self.env_prefix}_CLIENT_SECRET={secret} {self.env_prefix}_PORT={port} "
                f"{self.env_prefix}_BASE_URL={self.base_url} .venv/bin/python -m {self.module}")


def demo_applications(*, demo_rp_url: str = "http://127.0.0.1:5001",
                      van_ban_url: str = "http://127.0.0.1:5002",
                      mot_cua_url: str = "http://127.0.0.1:5003") -> list[DemoApplication]:
    """The example applications, on the ports their own defaults name (tests pass others)."""
    return [
        DemoApplication("demo-rp", "Ứng dụng mẫu (demo)",
                        "Ứng dụng mẫu dùng đăng nhập một lần: xem thông tin tài khoản mà ứng dụng nhận được.",
                        demo_rp_url.rstrip("/"), "examples.demo_rp.app", "DEMO", single_logout=False),
        DemoApplication("van-ban", "Quản lý văn bản",
                        "Văn bản đến, văn bản đi và hồ sơ công việc của cơ quan.",
                        van_ban_url.rstrip("/"), "examples.van_ban.app", "VAN_BAN", single_logout=True),
        DemoApplication("mot-cua", "Một cửa",
                        "Tiếp nhận hồ sơ và trả kết quả thủ tục hành chính.",
                        mot_cua_url.rstrip("/"), "examples.mot_cua.app", "MOT_CUA", single_logout=True),
    ]


def prepare_demo(services: Services, applications: list[DemoApplication]) -> dict[str, str]:
    """Create the demo accounts and register the applications' clients (once); returns each
    client id's secret. Secrets are stored hashed, so an existing client gets a new one:
    the printed commands always work. Portal texts an administrator changed are kept."""
    secrets: dict[str, str] = {}
    with services.database.session() as session:
        for username, name, groups, admin in DEMO_ACCOUNTS:
            if find_user(session, username) is None:
                create_user(session, services.passwords, username=username, password=DEMO_PASSWORD,
                            name=name, given_name=name.split()[-1], family_name=name.split()[0],
                            email=f"{username.replace('.', '-')}@phutho.gov.vn", groups=groups,
                            is_admin=admin)
        for application in applications:
            client = session.get(Client, application.client_id)
            if client is None:
                registered = register_client(
                    session, services.secret_hasher, name=application.name,
                    client_id=application.client_id, redirect_uris=[f"{application.base_url}/callback"],
                    post_logout_redirect_uris=[application.post_logout_redirect_uri],
                    backchannel_logout_uri=application.backchannel_logout_uri,
                    grant_types=["authorization_code", "refresh_token"],
                    settings=application.portal_settings())
                assert registered.client_secret is not None  # client_secret_basic
                secrets[application.client_id] = registered.client_secret
                continue
            if not client.description:  # a demo folder from before the portal existed
                apply_client_settings(client, application.portal_settings())
            secrets[application.client_id] = rotate_secret(session, services.secret_hasher, client)
    return secrets
