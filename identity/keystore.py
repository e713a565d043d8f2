"""The database-backed key stores: `keys.ring.KeyStore` and `keys.dkim.DkimKeyStore`."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from identity.db import Database
from identity.models import DkimKey, SigningKey
from keys.dkim import DkimKeyRecord
from keys.ring import KeyRecord


class DatabaseKeyStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def list_keys(self) -> list[KeyRecord]:
        with self._db.session() as session:
            rows = session.scalars(select(SigningKey).order_by(SigningKey.created_at)).all()
            return [
                KeyRecord(kid=r.kid, alg=r.alg, state=r.state, public_jwk=r.public_jwk,
                          sealed_private_key=r.sealed_private_key, created_at=r.created_at,
                          activated_at=r.activated_at, retired_at=r.retired_at)
                for r in rows
            ]

    def add_key(self, record: KeyRecord) -> None:
        with self._db.session() as session:
            session.add(SigningKey(
                kid=record.kid, alg=record.alg, state=record.state, public_jwk=record.public_jwk,
                sealed_private_key=record.sealed_private_key, created_at=int(record.created_at),
                activated_at=_int(record.activated_at), retired_at=_int(record.retired_at),
            ))

    def set_state(self, kid: str, state: str, *, activated_at: float | None = None,
                  retired_at: float | None = None) -> None:
        values: dict[str, object] = {"state": state}
        if activated_at is not None:
            values["activated_at"] = int(activated_at)
        if retired_at is not None:
            values["retired_at"] = int(retired_at)
        with self._db.session() as session:
            session.execute(update(SigningKey).where(SigningKey.kid == kid).values(**values))

    def delete_key(self, kid: str) -> None:
        with self._db.session() as session:
            session.execute(delete(SigningKey).where(SigningKey.kid == kid))


class DatabaseDkimKeyStore:
    """DKIM selectors in `dkim_keys`. Plain statements, no ORM objects: the gateway reads
    them at start and then every `keys.cache_seconds`, never per message."""

    _table = DkimKey.__table__

    def __init__(self, database: Database) -> None:
        self._db = database

    def list_dkim_keys(self) -> list[DkimKeyRecord]:
        table = self._table
        with self._db.engine.connect() as connection:
            rows = connection.execute(select(table).order_by(
                table.c.domain, table.c.created_at, table.c.selector)).mappings().all()
        return [DkimKeyRecord(**{**row, "public_key": bytes(row["public_key"]),
                                 "sealed_private_key": bytes(row["sealed_private_key"])})
                for row in rows]

    def add_dkim_key(self, record: DkimKeyRecord) -> None:
        with self._db.engine.begin() as connection:
            connection.execute(self._table.insert().values(
                domain=record.domain, selector=record.selector, algorithm=record.algorithm,
                state=record.state, public_key=record.public_key,
                sealed_private_key=record.sealed_private_key, created_at=int(record.created_at),
                activated_at=_int(record.activated_at), retired_at=_int(record.retired_at)))

    def set_dkim_state(self, domain: str, selector: str, state: str, *,
                       activated_at: float | None = None, retired_at: float | None = None) -> None:
        values: dict[str, object] = {"state": state}
        if activated_at is not None:
            values["activated_at"] = int(activated_at)
        if retired_at is not None:
            values["retired_at"] = int(retired_at)
        table = self._table
        with self._db.engine.begin() as connection:
            connection.execute(update(table).where(table.c.domain == domain,
                                                   table.c.selector == selector).values(**values))

    def delete_dkim_key(self, domain: str, selector: str) -> None:
        table = self._table
        with self._db.engine.begin() as connection:
            connection.execute(delete(table).where(table.c.domain == domain, table.c.selector == selector))


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
