"""Leases: which instance works a chain (or the outbox) now, with a fencing token.

Time is the store's own clock (`_now`), so instances on hosts whose clocks differ still agree on expiry. A lease
is taken when it has expired or when the taker already holds it under its name (an instance restarted after a
kill -9 takes its own lease back at once); every take increments the token. `fence` is a write on the lease
row inside the holder's transaction: a takeover committed before it makes it fail (the transaction rolls
back), and one attempted after it waits for that transaction (a row lock) and then reads its effects."""

from __future__ import annotations

from dataclasses import dataclass

from watcherd.exceptions import StoreError
from watcherd.store.db import Database


class LeaseLost(StoreError):
    """The lease was taken over: what this instance was about to commit under it is refused."""


@dataclass(frozen=True, slots=True)
class LeaseRow:
    name: str
    holder: str
    token: int
    expires_in: float  # seconds from now by the store's clock; negative once expired
    caught_up: bool  # as its holder last said


class LeaseQueries(Database):
    async def take_lease(self, name: str, holder: str, seconds: float) -> int | None:
        """Take the lease if it is free, expired, or already `holder`'s: its new token; None if another
        instance holds it. Inside a transaction."""
        await self._write(
            f"""INSERT INTO leases (name, holder, token, expires_at) VALUES (?, ?, 1, {self._now} + ?)
                ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = leases.token + 1,
                                                 expires_at = excluded.expires_at
                WHERE leases.expires_at < {self._now} OR leases.holder = excluded.holder""",
            (name, holder, seconds))
        row = await self._one("SELECT holder, token FROM leases WHERE name = ?", (name,))
        return int(row[1]) if row is not None and row[0] == holder else None

    async def renew_lease(self, name: str, holder: str, token: int, seconds: float, caught_up: bool = False) -> bool:
        """Extend a lease still held under `token` (even if it expired meanwhile, as long as nobody took it), and
        say whether its work is caught up (a chain: processed up to its node's tip)."""
        return await self._changed(
            f"""UPDATE leases SET expires_at = {self._now} + ?, caught_up = ?
                WHERE name = ? AND holder = ? AND token = ?""",
            (seconds, int(caught_up), name, holder, token)) == 1

    async def release_lease(self, name: str, holder: str, token: int) -> None:
        """Let the lease go at once (a clean stop): another instance need not wait for it to expire."""
        await self._write(f"UPDATE leases SET expires_at = {self._now} - 1 WHERE name = ? AND holder = ? AND token = ?",
                          (name, holder, token))

    async def fence(self, name: str, holder: str, token: int) -> None:
        """Inside the holder's transaction: LeaseLost unless the lease is still `holder`'s under `token`."""
        if await self._changed("UPDATE leases SET token = token WHERE name = ? AND holder = ? AND token = ?",
                             (name, holder, token)) != 1:
            raise LeaseLost(f"lease {name} was taken over (token {token} is stale): not committing")

    async def leases(self) -> list[LeaseRow]:
        rows = await self._all(
            f"SELECT name, holder, token, expires_at - {self._now}, caught_up FROM leases ORDER BY name")
        return [LeaseRow(r[0], r[1], int(r[2]), float(r[3]), bool(r[4])) for r in rows]
