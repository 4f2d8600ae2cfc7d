"""API keys: created once (the secret is shown then and never again), stored as a hash, each with scopes.

A key reads `lk_<id>_<secret>`. The id is public (listings, revocation); the secret is 256 random
bits, so a plain SHA-256 of it resists guessing as well as a slow password hash would, and costs
microseconds per request instead of tens of milliseconds.

A server may keep the keys it verified for a few seconds (`KeyCache`), so that most requests read no key
from the database: a key revoked meanwhile (by `loyalty apikey revoke`, another process) is then still
admitted until its entry is that old, and refused after.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, insert, select, update

from engine.errors import did_you_mean
from service.clock import Clock, utc_now
from service.errors import InputError, NotFoundError
from storage.db import autocommit_reads, read_snapshot, write_transaction
from storage.models import ApiKey

SCOPES = {
    "events:write": "send events and reverse them",
    "benefits:read": "read benefits, profiles, ledgers and quotes",
    "quotes:write": "create, commit and void quotes; redeem points",
    "admin": "everything",
}
PREFIX = "lk_"
KEYS = ApiKey.__table__
_BY_ID = select(KEYS.c.name, KEYS.c.secret_hash, KEYS.c.scopes, KEYS.c.revoked_at).where(KEYS.c.id == bindparam("key_id"))


@dataclass(frozen=True)
class Caller:
    """An authenticated API key."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        """True if the key has `scope` (admin has every scope)."""
        return scope in self.scopes or "admin" in self.scopes


def create_key(engine: Engine, name: str, scopes: list[str], clock: Clock = utc_now) -> tuple[str, dict]:
    """A new key: (the key text, to show once; its record)."""
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        raise InputError(f"unknown scope {unknown[0]!r}{did_you_mean(unknown[0], SCOPES)}; "
                         f"expected one or more of: {', '.join(SCOPES)}")
    if not scopes:
        raise InputError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    if not name.strip():
        raise InputError("a key needs a name saying who uses it, e.g. --name pricing-service")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    record = {"id": key_id, "name": name.strip(), "secret_hash": _digest(secret),
              "scopes": " ".join(sorted(set(scopes))), "created_at": clock(), "revoked_at": None}
    with write_transaction(engine) as conn:
        conn.execute(insert(KEYS).values(**record))
    return f"{PREFIX}{key_id}_{secret}", key_view(record)


def list_keys(engine: Engine) -> list[dict]:
    """Every key, newest first, without secrets."""
    with read_snapshot(engine) as conn:
        rows = conn.execute(select(KEYS).order_by(KEYS.c.created_at.desc(), KEYS.c.id)).all()
    return [key_view(dict(row._mapping)) for row in rows]


def revoke_key(engine: Engine, key_id: str, clock: Clock = utc_now) -> dict:
    """Revoke a key at once (revoking twice keeps the first moment)."""
    with write_transaction(engine) as conn:
        row = conn.execute(select(KEYS).where(KEYS.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no API key {key_id!r}; `loyalty apikey list` shows the ids")
        if row.revoked_at is None:
            conn.execute(update(KEYS).where(KEYS.c.id == key_id).values(revoked_at=clock()))
        row = conn.execute(select(KEYS).where(KEYS.c.id == key_id)).one()
    return key_view(dict(row._mapping))


class KeyCache:
    """Callers whose key was verified against the database less than `seconds` ago (0: none are kept), at
    most `size` of them. Only verified keys are kept, by id with the secret's hash (never the secret): an
    unknown, wrong or revoked key is read again each time, and a key created a moment ago works at once."""

    def __init__(self, seconds: float, size: int = 1000, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.size, self.clock = seconds, size, clock
        self._kept: dict[str, tuple[str, Caller, float]] = {}  # key id → (secret hash, caller, verified at)
        self._lock = threading.Lock()  # for writers (worker threads may verify keys at once); readers need none

    def get(self, presented: str) -> Caller | None:
        """The caller of `presented` if it was verified less than `seconds` ago, else None (read it)."""
        key_id, secret = _parts(presented)
        entry = self._kept.get(key_id) if key_id else None
        if entry is None:
            return None
        digest, caller, verified_at = entry
        if not 0 <= self.clock() - verified_at < self.seconds or not hmac.compare_digest(digest, _digest(secret)):
            return None
        return caller

    def keep(self, digest: str, caller: Caller) -> None:
        """Remember a caller just verified, whose secret hashes to `digest`."""
        if self.seconds <= 0:
            return
        with self._lock:
            now = self.clock()
            self._kept.pop(caller.key_id, None)  # re-inserted last: the dict's order is the order of verification
            if len(self._kept) >= self.size:
                self._kept = {key_id: entry for key_id, entry in self._kept.items() if now - entry[2] < self.seconds}
                if len(self._kept) >= self.size:
                    del self._kept[next(iter(self._kept))]  # the oldest
            self._kept[caller.key_id] = (digest, caller, now)


NO_CACHE = KeyCache(0)


def authenticate(engine: Engine, presented: str, keys: KeyCache = NO_CACHE) -> Caller | None:
    """The caller a presented key belongs to, or None if it is malformed, unknown, wrong or revoked; a key
    `keys` verified lately is not read again, one read is kept there."""
    known = keys.get(presented)
    if known is not None:
        return known
    key_id, secret = _parts(presented)
    if not key_id:
        return None
    with autocommit_reads(engine) as conn:
        row = conn.execute(_BY_ID, {"key_id": key_id}).first()
    digest = _digest(secret)
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_hash, digest):
        return None
    caller = Caller(key_id, row.name, frozenset(row.scopes.split()))
    keys.keep(digest, caller)
    return caller


def key_view(record: dict) -> dict:
    """A key as listings show it (never the secret or its hash)."""
    return {"id": record["id"], "name": record["name"], "scopes": record["scopes"].split(),
            "created_at": record["created_at"].isoformat(),
            "revoked_at": record["revoked_at"].isoformat() if record["revoked_at"] else None}


def _parts(presented: str) -> tuple[str, str]:
    """The key id and secret of a presented key; ("", "") if it does not read `lk_<id>_<secret>`."""
    key_id, _, secret = presented.removeprefix(PREFIX).partition("_")
    if not presented.startswith(PREFIX) or not key_id or not secret:
        return "", ""
    return key_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
