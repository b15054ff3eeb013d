"""Keyed pseudonyms, so a raw BSN or KvK number never reaches logs or audit records.

``pseudonymise`` is a keyed HMAC-SHA256: the same identifier and key give the same
pseudonym (so cases of one person can be linked by whoever holds the key), while the
pseudonym alone reveals nothing. The key comes from configuration (``LOKET_PSEUDONYM_KEY``)
and is never logged.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "ps1:"


def pseudonymise(identifier: str, key: bytes | str, *, domain: str = "subject") -> str:
    """Return ``ps1:<hex>``: HMAC-SHA256 over ``domain`` and the identifier.

    ``domain`` separates uses (for example ``subject`` vs ``bsn``) so pseudonyms of one
    identifier do not link across purposes. Raises ValueError for an empty key or identifier.
    """
    if not identifier:
        raise ValueError("identifier must not be empty")
    raw_key = key.encode() if isinstance(key, str) else key
    if not raw_key:
        raise ValueError("pseudonym key must not be empty")
    mac = hmac.new(raw_key, f"{domain}\x00{identifier}".encode(), hashlib.sha256)
    return PREFIX + mac.hexdigest()[:48]


def is_pseudonym(value: str) -> bool:
    """True for a value produced by :func:`pseudonymise`."""
    return value.startswith(PREFIX) and len(value) == len(PREFIX) + 48
