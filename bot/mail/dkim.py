"""DKIM signatures (RFC 6376, relaxed/relaxed) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463), on the
`cryptography` package.

dkimpy signs at about a hundred messages a second; the engine sends thousands. Here the message is
read once: the header block split into fields, the body canonicalised with two byte replacements
(only where there is whitespace to fold) and hashed, and only the fields that are signed are
canonicalised. Tests verify every signature with dkimpy, an independent implementation.

Which key signs a message is chosen by its `From:` domain (the key of that domain, or of the nearest
parent domain: DMARC's relaxed alignment), else by its `Sender:` domain (group mail whose author's own
address is kept). A domain with an RSA and an Ed25519 key gets both signatures. A message whose domains
have no key goes out as it came.

Keys are loaded once, at start: `load_key` turns every problem with one — a missing or unreadable file,
an unset variable, something that is not an unencrypted private key, a key that is not the algorithm
the settings name, an RSA key too short to be trusted — into one `KeyProblem` sentence.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from bot.mail.transport import Outcome, SmtpTarget, SmtpTransport

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# The fields signed, in this order, each only when the message has it; `from` is listed once more than
# it occurs, so a From added on the way breaks the signature (RFC 6376 §8.15).
SIGNED = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
MIN_RSA_BITS = 1024  # RFC 8301: verifiers treat shorter keys as no signature at all
RECOMMENDED_RSA_BITS = 2048

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_WSP_RUN = re.compile(rb"[ \t]+")
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9](?:[a-z0-9_-]{0,62}))*$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_ADDR_DOMAIN = re.compile(rb"@([A-Za-z0-9.-]+)")


class KeyProblem(Exception):
    """A DKIM key that can't be used, as one sentence for the person starting Postroom."""


def valid_domain(domain: str) -> bool:
    return bool(_DOMAIN.match(domain))


def valid_selector(selector: str) -> bool:
    return bool(_SELECTOR.match(selector))


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def bits(self) -> int:
        return self.private_key.key_size if isinstance(self.private_key, rsa.RSAPrivateKey) else 256

    def public_key_b64(self) -> str:
        """The `p=` of the DNS record: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519."""
        public = self.private_key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return base64.b64encode(raw).decode("ascii")

    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        kind = "ed25519" if self.algorithm == "ed25519-sha256" else "rsa"
        return f"v=DKIM1; k={kind}; p={self.public_key_b64()}"

    def describe(self) -> str:
        return f"{self.domain} (s={self.selector}, {self.algorithm}" + (
            f", {self.bits} bits)" if self.algorithm == "rsa-sha256" else ")"
        )

    def _sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(hashlib.sha256(data).digest())
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def parse_key(pem: bytes, *, domain: str, selector: str, where: str, algorithm: str | None = None) -> DkimKey:
    """A key from PEM (PKCS#8 or PKCS#1) or base64 DER; `where` names its source in the sentence."""
    name = f"The DKIM key for {domain} (selector {selector}) in {where}"
    text = pem.strip()
    if not text:
        raise KeyProblem(
            f"{name} is empty: write a private key there (postroom dkim keygen {domain} {selector})."
        )
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(text, password=None)
        else:
            key = serialization.load_der_private_key(base64.b64decode(text, validate=False), password=None)
    except TypeError:
        raise KeyProblem(
            f"{name} is encrypted with a passphrase; Postroom reads unencrypted keys, so keep the file "
            "readable by Postroom's user only (chmod 600)."
        ) from None
    except (ValueError, UnsupportedAlgorithm, binascii.Error):
        raise KeyProblem(
            f"{name} is not a private key in PEM form (a public key or a DNS record does not sign); "
            f"make one with postroom dkim keygen {domain} {selector}."
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        actual: Algorithm = "rsa-sha256"
        if key.key_size < MIN_RSA_BITS:
            raise KeyProblem(
                f"{name} is a {key.key_size}-bit RSA key, which receivers ignore; make a "
                f"{RECOMMENDED_RSA_BITS}-bit one with postroom dkim keygen {domain} {selector}."
            )
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        actual = "ed25519-sha256"
    else:
        raise KeyProblem(
            f"{name} is a {type(key).__name__.removeprefix('_')}; DKIM signs with RSA or Ed25519."
        )
    if algorithm is not None and algorithm != actual:
        raise KeyProblem(f"{name} is an {actual} key, but the settings say algorithm = {algorithm!r}.")
    return DkimKey(domain, selector, actual, key)


def load_key(
    *,
    domain: str,
    selector: str,
    key_file: str | None = None,
    key_env: str | None = None,
    algorithm: str | None = None,
    environ: dict[str, str] | None = None,
) -> DkimKey:
    """The key from a file or from an environment variable (PEM text; `\\n` written for line ends is
    read as one), or KeyProblem."""
    env = os.environ if environ is None else environ
    if key_file:
        path = Path(key_file).expanduser()
        where = f"key_file {path}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyProblem(
                f"The DKIM key file {path} for {domain} (selector {selector}) does not exist; make it "
                f"with postroom dkim keygen {domain} {selector} --out {path}."
            ) from None
        except IsADirectoryError:
            raise KeyProblem(f"The DKIM key_file {path} for {domain} is a folder, not a key file.") from None
        except PermissionError:
            raise KeyProblem(
                f"The DKIM key file {path} for {domain} (selector {selector}) can't be read by this user; "
                "give Postroom's user read access (and nobody else)."
            ) from None
        except OSError as exc:
            raise KeyProblem(
                f"The DKIM key file {path} for {domain} can't be read: {exc.strerror}."
            ) from None
    elif key_env:
        where = f"${key_env}"
        value = env.get(key_env)
        if value is None:
            raise KeyProblem(
                f"The DKIM key for {domain} (selector {selector}) is to come from ${key_env}, which is not set."
            )
        data = value.replace("\\n", "\n").encode("utf-8", "replace")
    else:
        raise KeyProblem(f"The DKIM key for {domain} (selector {selector}) needs key_file or key_env.")
    return parse_key(data, domain=domain, selector=selector, where=where, algorithm=algorithm)


def generate_key(algorithm: Algorithm, bits: int = RECOMMENDED_RSA_BITS) -> bytes:
    """A new private key as unencrypted PKCS#8 PEM."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def txt_strings(record: str, size: int = 255) -> list[str]:
    """A TXT record's value as DNS character-strings (each at most 255 bytes)."""
    return [record[i : i + size] for i in range(0, len(record), size)]


# -- canonicalisation (RFC 6376 §3.4, relaxed) ------------------------------------------------------
def relaxed_header(field: bytes) -> bytes:
    """One header field (name, colon, value, folded or not, without its final CRLF), canonicalised."""
    name, _, value = field.partition(b":")
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """The body (CRLF line ends) canonicalised: whitespace runs to one space, none at a line's end, no
    empty lines at the end, one CRLF after the last line (nothing at all for an empty body)."""
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    body = body.rstrip(b"\r\n")
    if body.endswith(b" "):
        body = body.rstrip(b" ")
    return body + b"\r\n" if body else b""


def _body_hash(data: bytes, start: int) -> bytes:
    """SHA-256 of the relaxed body that starts at `start`, without copying a body that has no whitespace
    to fold (what the engine builds: quoted-printable encodes the whitespace at line ends)."""
    if data.find(b"\t", start) >= 0 or data.find(b"  ", start) >= 0 or data.find(b" \r\n", start) >= 0:
        return hashlib.sha256(relaxed_body(data[start:])).digest()
    stop = len(data)
    while stop > start and data[stop - 1] in (10, 13):  # the empty lines at the end
        stop -= 1
    if stop > start and data[stop - 1] == 32:
        return hashlib.sha256(relaxed_body(data[start:])).digest()
    digest = hashlib.sha256(memoryview(data)[start:stop])
    if stop > start:
        digest.update(b"\r\n")
    return digest.digest()


def normalise_line_ends(data: bytes) -> bytes:
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return _LINE_ENDS.sub(b"\r\n", data)


def split_fields(head: bytes, wanted: frozenset[bytes] | None = None) -> list[tuple[bytes, bytes]]:
    """The header block (without the blank line) as (lower-case name, the whole field without its
    final CRLF), top to bottom, only the `wanted` names if given; continuation lines stay with their
    field."""
    fields: list[tuple[bytes, bytes]] = []
    keep = False
    for line in head.split(b"\r\n"):
        first = line[:1]
        if first == b" " or first == b"\t":
            if keep and fields:
                name, text = fields[-1]
                fields[-1] = (name, text + b"\r\n" + line)
            continue
        if not line:
            keep = False
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = wanted is None or name in wanted
        if keep:
            fields.append((name, line))
    return fields


_WANTED = frozenset((*SIGNED, b"sender"))


def _domain_of(value: bytes) -> str | None:
    """The domain of the (last) address in a From or Sender value."""
    found = _ADDR_DOMAIN.findall(value)
    if not found:
        return None
    return found[-1].decode("ascii").strip(".").lower() or None


def _fold_b64(sig: bytes, first: int) -> bytes:
    """The signature's base64, folded so no line passes 78 characters (whitespace in b= is ignored)."""
    text = base64.b64encode(sig)
    out = [text[:first]]
    for i in range(first, len(text), 72):
        out.append(b"\r\n\t" + text[i : i + 72])
    return b"".join(out)


def _fold_list(names: list[bytes]) -> bytes:
    """The h= list, folded after a colon before a line would pass 76 characters."""
    out = b""
    line = 3  # the tab and "h="
    for i, name in enumerate(names):
        piece = name if i == 0 else b":" + name
        if line + len(piece) > 76:
            out += b":\r\n\t" + name
            line = 1 + len(name)
        else:
            out += piece
            line += len(piece)
    return out


class DkimSigner:
    """Signs messages with the key(s) of their domain. Built once at start from the loaded keys."""

    def __init__(self, keys: Iterable[DkimKey], clock: Callable[[], float] = time.time):
        self.keys: tuple[DkimKey, ...] = tuple(keys)
        self._by_domain: dict[str, list[DkimKey]] = {}
        for key in self.keys:
            self._by_domain.setdefault(key.domain, []).append(key)
        self._lookup: dict[str, tuple[DkimKey, ...]] = {}
        self._clock = clock
        # Group mail hands the same bytes to every member: they are signed once.
        self._last: tuple[bytes, bytes] | None = None
        self._h_lists: dict[tuple[bytes, ...], bytes] = {}  # the folded h= of each list of signed names
        self.pool: SigningPool | None = None  # RSA signatures in other processes (dkim.signing_processes)

    def _h_list(self, names: list[bytes]) -> bytes:
        folded = _fold_list(names)
        if len(self._h_lists) < 256:
            self._h_lists[tuple(names)] = folded
        return folded

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def uses_rsa(self) -> bool:
        return any(k.algorithm == "rsa-sha256" for k in self.keys)

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        """The keys of `domain` or of its nearest parent domain that has any."""
        found = self._lookup.get(domain)
        if found is None:
            found = ()
            labels = domain.split(".")
            for i in range(len(labels) - 1):
                keys = self._by_domain.get(".".join(labels[i:]))
                if keys:
                    found = tuple(keys)
                    break
            if len(self._lookup) < 10_000:
                self._lookup[domain] = found
        return found

    def sign(self, data: bytes) -> bytes:
        """The message with a DKIM-Signature per key of its domain in front (CRLF line ends throughout),
        or as it came (line ends made CRLF) when no key covers it or it has no header block."""
        last = self._last
        if last is not None and last[0] is data:
            return last[1]
        prepared = self._prepare(data)
        if isinstance(prepared, bytes):
            return prepared
        body, jobs = prepared
        signed = _assemble(body, jobs, [key._sign(to_sign) for key, _, to_sign in jobs])
        self._last = (data, signed)
        return signed

    async def sign_async(self, data: bytes) -> bytes:
        """`sign`, with the RSA signatures made in the signing processes when there are any (the
        canonicalisation and hashing stay here: what crosses over is the few hundred bytes signed)."""
        pool = self.pool
        if pool is None:
            return self.sign(data)
        last = self._last
        if last is not None and last[0] is data:
            return last[1]
        prepared = self._prepare(data)
        if isinstance(prepared, bytes):
            return prepared
        body, jobs = prepared
        sigs = [
            await pool.sign(self.keys.index(key), to_sign)
            if key.algorithm == "rsa-sha256"
            else key._sign(to_sign)
            for key, _, to_sign in jobs
        ]
        signed = _assemble(body, jobs, sigs)
        self._last = (data, signed)
        return signed

    def _prepare(self, data: bytes) -> bytes | tuple[bytes, list[tuple[DkimKey, bytes, bytes]]]:
        """The message as it goes out when nothing signs it, else (the message, [(key, the signature
        header without its b= value, the bytes that key signs)])."""
        data = normalise_line_ends(data)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if not data.endswith(b"\r\n") or b":" not in data:
                return data
            head, start = data[:-2], len(data)
        else:
            head, start = data[:end], end + 4
        fields = split_fields(head, _WANTED)
        keys: Sequence[DkimKey] = ()
        for wanted in (b"from", b"sender"):
            for name, text in fields:
                if name == wanted:
                    domain = _domain_of(text.partition(b":")[2])
                    keys = self.keys_for(domain) if domain else ()
                    break
            if keys:
                break
        if not keys:
            return data
        by_name: dict[bytes, list[bytes]] = {}
        for name, text in fields:
            if name in SIGNED:
                by_name.setdefault(name, []).append(text)
        names: list[bytes] = []
        canon: list[bytes] = []
        for name in SIGNED:
            instances = by_name.get(name)
            if not instances:
                continue
            for text in reversed(instances):  # the last instance is signed first (RFC 6376 §5.4.2)
                names.append(name)
                canon.append(relaxed_header(text))
        if b"from" in by_name:
            names.append(b"from")  # one more than there are: nothing can be added
        signed_headers = b"".join(canon)
        bh = base64.b64encode(_body_hash(data, start))
        now = int(self._clock())
        h = self._h_lists.get(tuple(names)) or self._h_list(names)
        jobs = []
        for key in keys:
            head_part = (
                b"DKIM-Signature: v=1; a=%s; c=relaxed/relaxed;\r\n\td=%s; s=%s; t=%d;\r\n\th=%s;\r\n\tbh=%s;\r\n\tb="
                % (key.algorithm.encode(), key.domain.encode(), key.selector.encode(), now, h, bh)
            )
            jobs.append((key, head_part, signed_headers + relaxed_header(head_part)[:-2]))
        return data, jobs


def _assemble(data: bytes, jobs: list[tuple[DkimKey, bytes, bytes]], sigs: list[bytes]) -> bytes:
    return (
        b"".join(head + _fold_b64(sig, 70) + b"\r\n" for (_, head, _), sig in zip(jobs, sigs, strict=True))
        + data
    )


# -- RSA signatures in other processes -------------------------------------------------------------
# An RSA-2048 signature is about a millisecond of CPU, and `cryptography` holds the GIL while it signs:
# threads don't help, processes do. Each process gets the keys once, when it starts.
_CHILD_KEYS: list[rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = []  # set in a signing process only


def _child_start(pems: list[bytes]) -> None:
    _CHILD_KEYS[:] = [serialization.load_pem_private_key(p, password=None) for p in pems]  # type: ignore[misc]


def _child_sign(index: int, data: bytes) -> bytes:
    key = _CHILD_KEYS[index]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(hashlib.sha256(data).digest())
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class SigningPool:
    """`processes` signing processes holding the keys; `sign` hands one signature's bytes to one."""

    def __init__(self, keys: Sequence[DkimKey], processes: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pems = [
            k.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            for k in keys
        ]
        self.executor = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a process with threads and a loop
            initializer=_child_start,
            initargs=(pems,),
        )

    async def sign(self, index: int, data: bytes) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.executor, _child_sign, index, data)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class SignedTransport(SmtpTransport):
    """The SMTP transport with every message DKIM-signed before it reaches the SMTP client: the one place
    all outgoing mail passes (campaigns, automations, group mail, test sends, confirmations, notices)."""

    def __init__(self, target: SmtpTarget, connections: int | None, signer: DkimSigner):
        super().__init__(target, connections)
        self.signer = signer

    async def send(self, sender: str, recipient: str, data: bytes) -> Outcome:
        return await super().send(sender, recipient, await self.signer.sign_async(data))
