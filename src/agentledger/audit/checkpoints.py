"""Signed checkpoints: Ed25519 signatures over (workspace, seq, hash) of a chain's event, so a chain rewritten
whole (every hash recomputed) still fails against what was signed, and verification can start from a checkpoint
once older events are pruned.

The signed payload is the canonical encoding (audit/chain.py) of {workspace_id, seq, hash, key_id, signed_at}; the
signature is hex. A key is named by `key_id`, the first 16 hex digits of SHA-256 over its raw 32 public bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agentledger.audit.chain import canonical

ALGORITHM = "Ed25519"
SIGNED = ("workspace_id", "seq", "hash", "key_id", "signed_at")


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def private_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_private(pem: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def load_public(pem: str | bytes) -> Ed25519PublicKey:
    """A PEM public key (SubjectPublicKeyInfo); ValueError for anything else, an Ed25519 key of another kind too."""
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def payload(checkpoint: Mapping[str, Any]) -> bytes:
    return canonical({k: checkpoint[k] for k in SIGNED})


def sign(key: Ed25519PrivateKey, workspace_id: str, seq: int, event_hash: str, signed_at: str) -> dict[str, Any]:
    """A checkpoint of event `seq` (whose hash is `event_hash`), as stored and exported."""
    cp: dict[str, Any] = {
        "workspace_id": workspace_id,
        "seq": seq,
        "hash": event_hash,
        "key_id": key_id(key.public_key()),
        "signed_at": signed_at,
    }
    cp["signature"] = key.sign(payload(cp)).hex()
    return cp


def signature_ok(public: Ed25519PublicKey, checkpoint: Mapping[str, Any]) -> bool:
    try:
        public.verify(bytes.fromhex(checkpoint["signature"]), payload(checkpoint))
    except (InvalidSignature, ValueError, TypeError, KeyError):
        return False
    return True
