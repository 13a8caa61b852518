"""Identifier generation. Prefixed so an id says what it names in logs and URLs."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """`prefix_` + 24 hex characters (96 random bits): URL-safe and unguessable."""
    return f"{prefix}_{secrets.token_hex(12)}"
