"""Credential formats. Keys carry 256 random bits, so a single SHA-256 is the right hash: a slow KDF only
matters for guessable secrets, and it would put milliseconds on every request's hot path."""

from __future__ import annotations

import hashlib
import secrets

VIRTUAL_KEY_PREFIX = "vk-"
ADMIN_TOKEN_PREFIX = "adm-"
PAT_PREFIX = "pat_"  # personal access tokens: a member's, for /api only (docs/security.md)
MAX_PAT_DAYS = 3650  # a PAT's longest life, and its default
DEFAULT_PAT_DAYS = 90


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """What listings show instead of the key: enough to recognise it, not enough to use it."""
    return secret[:10]
