"""WeCom's callback cipher, written on `cryptography` (WXBizMsgCrypt's scheme).

Signature: SHA1 over the sorted concatenation of token, timestamp, nonce and the encrypted text,
compared in constant time. Cipher: AES-256-CBC, key = base64(EncodingAESKey + "="), IV = key[:16],
PKCS#7 padding to 32-byte blocks. Plaintext = 16 random bytes ‖ 4-byte big-endian length ‖ message ‖
receive id, and the receive id must be our corp id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32


class CallbackRefused(Exception):
    """A callback that fails verification. `status` is the HTTP status to answer with."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class WeComCrypto:
    def __init__(self, token: str, encoding_aes_key: str, receive_id: str):
        if len(encoding_aes_key) != 43:
            raise ValueError("the EncodingAESKey must be 43 characters")
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error:
            raise ValueError("the EncodingAESKey is not valid base64") from None
        if len(key) != 32:
            raise ValueError("the EncodingAESKey must decode to 32 bytes")
        self.token = token
        self.key = key
        self.iv = key[:16]
        self.receive_id = receive_id

    # -- signature -------------------------------------------------------------------------------
    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        parts = sorted([self.token, timestamp, nonce, encrypted])
        return hashlib.sha1("".join(parts).encode()).hexdigest()

    def verify(self, signature: str, timestamp: str, nonce: str, encrypted: str) -> None:
        expected = self.signature(timestamp, nonce, encrypted)
        if not hmac.compare_digest(expected.encode(), (signature or "").lower().encode()):
            raise CallbackRefused("the signature does not match", 403)

    # -- cipher ----------------------------------------------------------------------------------
    def decrypt(self, encrypted: str) -> str:
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise CallbackRefused("the encrypted text is not base64") from None
        if not raw or len(raw) % 16:
            raise CallbackRefused("the encrypted text has a broken length")
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).decryptor()
        padded = decryptor.update(raw) + decryptor.finalize()
        pad = padded[-1]
        if pad < 1 or pad > BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise CallbackRefused("the padding is broken")
        plain = padded[:-pad]
        if len(plain) < 20:
            raise CallbackRefused("the decrypted text is too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise CallbackRefused("the decrypted length is out of range")
        message, receive_id = plain[20 : 20 + length], plain[20 + length :]
        if not hmac.compare_digest(receive_id, self.receive_id.encode()):
            raise CallbackRefused("the message is for another corp id", 403)
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackRefused("the decrypted text is not UTF-8") from None

    def encrypt(self, message: str, random16: bytes | None = None) -> str:
        body = message.encode("utf-8")
        plain = (random16 or os.urandom(16)) + struct.pack(">I", len(body)) + body + self.receive_id.encode()
        pad = BLOCK - len(plain) % BLOCK
        plain += bytes([pad]) * pad
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def encrypt_envelope(self, message: str, timestamp: str, nonce: str) -> tuple[str, str]:
        """The (encrypted, signature) pair WeCom sends, or a passive reply carries."""
        encrypted = self.encrypt(message)
        return encrypted, self.signature(timestamp, nonce, encrypted)
