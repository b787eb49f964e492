"""API keys: created once in plaintext for their owner, stored as a SHA-256, checked in constant time.

A key is ``vdc_`` and 43 random URL-safe characters (256 bits), so a plain SHA-256 is enough: a slow password
hash only helps against guessing low-entropy secrets. Every job belongs to the ``owner`` of the key that
submitted it; an owner may hold several keys (one per machine, say) and revoke each on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from service.models import ApiKey, utcnow

KEY_PREFIX = "vdc_"
# Shown in key listings so an owner can tell keys apart; 8 random characters reveal nothing useful.
DISPLAY_CHARS = len(KEY_PREFIX) + 8
MAX_KEY_LENGTH = 200

# Built once: on SQLite, building a statement costs more than running it, and every request authenticates.
_LIVE_KEY = select(ApiKey).where(ApiKey.key_hash == bindparam("digest"), ApiKey.revoked_at.is_(None))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _checked(value: str, what: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise ValueError(f"{what} must be 1 to 200 characters, got {len(value)}")
    return value


def create_api_key(*, session: Session, owner: str, name: str) -> str:
    """Create a key for ``owner`` and return it in plaintext; this is the only time it can be seen."""
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(owner=_checked(owner, "owner"), name=_checked(name, "name"), key_hash=_hash(token),
               prefix=token[:DISPLAY_CHARS])
    )
    session.commit()
    return token


def authenticate(*, session: Session, token: str) -> ApiKey | None:
    """The live key that ``token`` is, or None.

    The lookup is by hash, so the index reveals nothing about the key through timing; the final comparison is
    constant-time as well.
    """
    if not token.startswith(KEY_PREFIX) or len(token) > MAX_KEY_LENGTH:
        return None
    digest = _hash(token)
    key = session.scalar(_LIVE_KEY, {"digest": digest})
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key


def revoke_api_key(*, session: Session, key_id: str) -> ApiKey | None:
    """Revoke a key at once (its jobs stay with its owner); None if there is no such key."""
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key


def list_api_keys(*, session: Session, owner: str | None = None) -> list[ApiKey]:
    """Keys, oldest first, of one owner or of everyone; the plaintext is not kept, only ``prefix``."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))
