"""Signed tokens for links in mail and previews (bot/campaigns/tracking.py says which kinds exist).

A token is `<base64url payload>.<base64url HMAC-SHA256>`; the payload is a short JSON-free
string `kind|id[|extra]` of opaque ids (a delivery id, a campaign id), never an address.
Tampering with any part fails verification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from bot.errors import UserError
from bot.i18n import t

# The largest id a row can have: SQLite's INTEGER and PostgreSQL's BIGINT are signed 64-bit. A token is
# signed, so it can only name a bigger one if we signed it; still, looking one up is a 500, not an answer.
MAX_ROW_ID = 2**63 - 1


def row_id(text: str) -> int | None:
    """The row id a token part spells (ASCII digits, within MAX_ROW_ID), else None. Not `str.isdigit`:
    it takes "²", which `int` refuses."""
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ROW_ID else None


def base36_id(text: str) -> int | None:
    """The row id a VERP local part spells in base 36 (already matched as [0-9a-z]+), else None."""
    value = int(text, 36)
    return value if value <= MAX_ROW_ID else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UnsetSecret(UserError):
    """A link would be signed, and web.secret is not set."""


class Signer:
    """Signs with web.secret. Without one (a command that signs nothing, run before `postroom init`)
    it verifies nothing and refuses to sign, with a sentence saying how to make a secret."""

    def __init__(self, secret: str | None):
        self.ready = bool(secret)
        # Unset: a random key, so nothing verifies, rather than a key anyone could compute.
        material = secret if secret else secrets.token_hex(32)
        self._key = hashlib.sha256(("postroom-links:" + material).encode()).digest()
        self._keyed = hmac.new(
            self._key, digestmod=hashlib.sha256
        )  # copied per token: no key set-up each time

    def _require(self) -> None:
        if not self.ready:
            raise UnsetSecret(
                t(
                    "Links in mail can't be signed because web.secret is not set: run {init} to write a "
                    "postroom.toml with generated secrets.",
                    init="postroom init",
                )
            )

    def _mac(self, payload: bytes) -> str:
        h = self._keyed.copy()
        h.update(payload)
        return _b64(h.digest()[:18])

    def short_mac(self, text: str, length: int = 16) -> str:
        """A lower-case hex MAC, for places that fold case (an SMTP local part: VERP)."""
        h = self._keyed.copy()  # the same MAC as hmac.new(key, text) without the key's set-up (a VERP a copy)
        h.update(text.encode())
        return h.hexdigest()[:length]

    def sign(self, *parts: str) -> str:
        self._require()
        for p in parts:
            if "|" in p:
                raise ValueError("a signed part cannot contain '|'")
        payload = "|".join(parts).encode()
        return f"{_b64(payload)}.{self._mac(payload)}"

    def verify(self, token: str, kind: str) -> list[str] | None:
        """The parts after `kind`, or None when the token is malformed, foreign or tampered with."""
        if not self.ready or not token or len(token) > 4096 or token.count(".") != 1 or not token.isascii():
            return None
        body, mac = token.split(".")
        try:
            payload = _unb64(body)
        except (ValueError, TypeError):
            return None
        if _b64(payload) != body:  # only the canonical spelling: no two tokens for one payload
            return None
        if not hmac.compare_digest(self._mac(payload), mac):
            return None
        try:
            parts = payload.decode().split("|")
        except UnicodeDecodeError:
            return None
        if not parts or parts[0] != kind:
            return None
        return parts[1:]

    def sign_expiring(self, kind: str, *parts: str, ttl_s: int) -> str:
        return self.sign(kind, *parts, str(int(time.time()) + ttl_s))

    def verify_expiring(self, token: str, kind: str) -> list[str] | None:
        parts = self.verify(token, kind)
        if not parts:
            return None
        try:
            expires = int(parts[-1])
        except ValueError:
            return None
        return parts[:-1] if time.time() <= expires else None
