"""Amazon SNS messages to an HTTP(S) endpoint: the signature check and the subscription confirmation.

SNS signs each message with the private key of a certificate it publishes at `SigningCertURL`
(https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html). The message's own
fields name that URL, so the URL is the trust decision: only `https://sns.<region>.amazonaws.com/….pem`
is fetched (TLS verified by httpx, so the certificate comes from Amazon's host), never a URL with a
user, a port or another host. `email_events.ses.unsafe_cert_url_pattern` replaces that rule for a
local fake in tests, and `postroom serve` warns while it is set.

The string signed is `Name\\nValue\\n` for the message's fields in byte order of their names:
Message, MessageId, Subject (when present), Timestamp, TopicArn, Type for a Notification; Message,
MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type for a (Un)SubscriptionConfirmation.
SignatureVersion 1 is RSA PKCS#1 v1.5 over SHA1, 2 over SHA256.

A certificate is fetched once per URL and kept (SNS rotates them rarely; a few per region at most).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bot.config import SNS_HOST_RE
from bot.webhooks import Refused

NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
MESSAGE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
MAX_CERT_BYTES = 64 * 1024
MAX_CACHED_CERTS = 32
FETCH_TIMEOUT_S = 10.0
_HOST = re.compile(SNS_HOST_RE)


def string_to_sign(message: dict[str, object]) -> bytes:
    """What SNS signed for `message` (its Type decides the fields)."""
    fields = NOTIFICATION_FIELDS if message.get("Type") == "Notification" else CONFIRMATION_FIELDS
    out = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue  # a Notification without a Subject signs without the line
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def sns_url_allowed(url: str, unsafe_pattern: str = "", *, pem: bool = False) -> bool:
    """Whether `url` is one of Amazon SNS's own: https, no user or port, host sns.<region>.amazonaws.com
    (and a .pem path for a certificate). With `unsafe_pattern` (tests only) the whole URL must match it instead."""
    if unsafe_pattern:
        return re.fullmatch(unsafe_pattern, url) is not None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme == "https"
        and "@" not in parts.netloc
        and port in (None, 443)
        and _HOST.fullmatch(host) is not None
        and (not pem or parts.path.endswith(".pem"))
    )


class SnsVerifier:
    """Checks SNS message signatures against certificates fetched from SNS's own hosts, cached by URL."""

    def __init__(self, unsafe_pattern: str = ""):
        self.unsafe_pattern = unsafe_pattern
        self._certs: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        key = self._certs.get(url)
        if key is not None:
            self._certs.move_to_end(url)
            return key
        try:
            async with (
                httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise Refused(503, f"The SNS signing certificate answered HTTP {response.status_code}.")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_CERT_BYTES:
                        raise Refused(403, "The SNS signing certificate is larger than a certificate can be.")
        except httpx.HTTPError:
            raise Refused(
                503, "The SNS signing certificate could not be fetched; SNS will try again."
            ) from None
        try:
            public = x509.load_pem_x509_certificate(bytes(data)).public_key()
        except ValueError:
            raise Refused(403, "The SNS signing certificate is not a PEM certificate.") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise Refused(403, "The SNS signing certificate does not hold an RSA key.")
        self._certs[url] = public
        while len(self._certs) > MAX_CACHED_CERTS:
            self._certs.popitem(last=False)
        return public

    async def verify(self, message: dict[str, object]) -> None:
        """Refused(401/403) unless `message` carries a valid SNS signature."""
        kind = message.get("Type")
        if kind not in MESSAGE_TYPES:
            raise Refused(400, "The body is not an Amazon SNS message (no known Type).")
        for name in NOTIFICATION_FIELDS if kind == "Notification" else CONFIRMATION_FIELDS:
            if name != "Subject" and not isinstance(message.get(name), str):
                raise Refused(400, f"The SNS message has no {name}.")
        version = message.get("SignatureVersion")
        algorithm: hashes.HashAlgorithm
        if version == "1":
            algorithm = hashes.SHA1()  # noqa: S303  (what SignatureVersion 1 is; SNS topics default to it)
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise Refused(401, "The SNS message is unsigned or has a SignatureVersion other than 1 or 2.")
        url = message.get("SigningCertURL")
        if not isinstance(url, str) or not sns_url_allowed(url, self.unsafe_pattern, pem=True):
            raise Refused(
                403,
                "The SigningCertURL is not an Amazon SNS certificate URL (https://sns.<region>.amazonaws.com/…).",
            )
        signature = message.get("Signature")
        try:
            raw = base64.b64decode(str(signature or ""), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            raise Refused(401, "The SNS message's Signature is missing or not base64.")
        key = await self._key(url)
        try:
            key.verify(raw, string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise Refused(401, "The SNS message's signature does not match its certificate.") from None
