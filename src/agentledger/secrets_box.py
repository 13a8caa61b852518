"""Provider credentials are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_setting(cls, value: str | None, key_file: Path) -> SecretBox:
        """Use the configured key, else the one in `key_file`, else create that file (mode 0600)."""
        if value:
            return cls(value.encode())
        if key_file.exists():
            return cls(key_file.read_bytes().strip())
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return cls(key)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError("A provider key cannot be decrypted: AGENTLEDGER_SECRET_KEY changed?") from exc

    def seal(self, plaintext: str) -> str:
        """Encrypt with the time of sealing inside (Fernet's own timestamp), for `open_fresh`."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open_fresh(self, token: str, max_age_s: int) -> str | None:
        """What `seal` sealed, if it is authentic and at most `max_age_s` old; else None (never raises: a
        forged or expired dashboard cookie is a sign-in page, not an error)."""
        try:
            return self._fernet.decrypt(token.encode(), ttl=max_age_s).decode()
        except (InvalidToken, ValueError, UnicodeError):
            return None
