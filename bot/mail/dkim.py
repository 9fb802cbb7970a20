"""DKIM signatures (RFC 6376, relaxed/relaxed) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463), on the
`cryptography` package.

dkimpy signs at about a hundred messages a second; the engine sends thousands. Here a message costs a few
passes of C over its bytes and a few dozen Python operations besides the signature itself: the header
block is unfolded and its whitespace folded as a whole, then only the signed fields are kept; the body is
hashed as it is when it has no whitespace to fold (quoted-printable leaves none at line ends), else folded
with one split and join; the DKIM-Signature header is made once per key and list of signed names, as sent
and canonicalised, with only t= and bh= put in per message. A message from the composer (`WireBytes`) is
known to be CRLF throughout and is not scanned for bare line ends. tests/test_dkim_canon.py checks the
canonical forms against dkimpy's; every signature in the tests is verified by dkimpy, an independent
implementation.

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
from bot.mail.wire import WireBytes

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
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(hashlib.sha256(data).digest())  # RFC 8463: Ed25519 over the SHA-256 of the data


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
# Whole-block byte operations (str.replace, split and join run in C) rather than a Python loop per line
# or a regular expression per whitespace run: a campaign message is canonicalised in a few passes over its
# bytes. tests/test_dkim_canon.py checks each function against dkimpy's own canonicalisation.
def fold_whitespace(data: bytes) -> bytes:
    """Every run of spaces and tabs as one space (line ends untouched). One split and join in C: an
    indented HTML part has a run on nearly every line, and a regular expression substitution costs a
    match per run (three times as long on a 10 kB part)."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    if b"  " not in data:
        return data
    folded = b" ".join(filter(None, data.split(b" ")))  # the empty pieces are the runs' extra spaces
    # Runs at the very start and end leave no empty piece to drop between words; keep one space each.
    if data[:1] == b" " and folded[:1] != b" ":
        folded = b" " + folded
    if data[-1:] == b" " and folded[-1:] != b" ":
        folded += b" "
    return folded


def relaxed_header(field: bytes) -> bytes:
    """One header field (name, colon, value, folded or not, without its final CRLF), canonicalised."""
    name, _, value = field.partition(b":")
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = fold_whitespace(value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" \t") + b"\r\n"


def relaxed_fields(head: bytes, wanted: frozenset[bytes] | None = None) -> dict[bytes, list[bytes]]:
    """The header block (CRLF line ends, without the blank line) as {lower-case name: [each field of that
    name canonicalised with its CRLF, top to bottom]}, only the `wanted` names if given. The block is
    unfolded and its whitespace folded as a whole, then read a line per field; a continuation line before
    any field belongs to none and is left out."""
    block = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")  # unfolded: each line one field
    if b"\t" in block or b"  " in block:
        block = fold_whitespace(block)  # now the only whitespace is single spaces
    fields: dict[bytes, list[bytes]] = {}
    for line in block.split(b"\r\n"):
        if not line or line[0] == 32:  # an empty header block, or a continuation of nothing
            continue
        name, _, value = line.partition(b":")
        name = name.rstrip(b" ").lower()
        if wanted is None or name in wanted:
            canon = name + b":" + value.strip(b" ") + b"\r\n"
            if name in fields:
                fields[name].append(canon)
            else:
                fields[name] = [canon]
    return fields


def relaxed_body(body: bytes) -> bytes:
    """The body (CRLF line ends) canonicalised: whitespace runs to one space, none at a line's end, no
    empty lines at the end, one CRLF after the last line (nothing at all for an empty body). A last line
    without its CRLF is read as SMTP delivers it, with one: its trailing whitespace goes too, and so do
    the empty lines before it when that was all it held."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b"\t" in body or b"  " in body:
        body = fold_whitespace(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def body_hash(data: bytes, start: int = 0) -> bytes:
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


def normalise_line_ends(data: bytes) -> WireBytes:
    """`data` with every CRLF, bare LF and bare CR as CRLF; `WireBytes` are so already and not scanned."""
    if type(data) is WireBytes:
        return data
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return WireBytes(data)
    return WireBytes(_LINE_ENDS.sub(b"\r\n", data))


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


# A DKIM-Signature header before its t= value, between t= and bh=, and after bh=: as sent, canonicalised.
_Template = tuple[tuple[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]


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
        self._templates: dict[tuple[int, tuple[bytes, ...]], _Template] = {}  # by id(key), signed names
        self.pool: SigningPool | None = None  # RSA signatures in other processes (dkim.signing_processes)

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

    def _prepare(self, data: bytes) -> WireBytes | tuple[WireBytes, list[tuple[DkimKey, bytes, bytes]]]:
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
        fields = relaxed_fields(head, _WANTED)
        keys: Sequence[DkimKey] = ()
        for author in (b"from", b"sender"):
            if author in fields:
                domain = _domain_of(fields[author][0][len(author) + 1 :])
                keys = self.keys_for(domain) if domain else ()
                if keys:
                    break
        if not keys:
            return data
        if not data.endswith(b"\r\n"):  # as the transport will send it: what the receiver verifies
            data = WireBytes(data + b"\r\n")
        names: list[bytes] = []
        signed: list[bytes] = []
        for name in SIGNED:
            instances = fields.get(name)
            if instances is None:
                continue
            if len(instances) == 1:
                names.append(name)
                signed.append(instances[0])
            else:
                names += [name] * len(instances)
                signed += reversed(instances)  # the last instance is signed first (RFC 6376 §5.4.2)
        if b"from" in fields:
            names.append(b"from")  # one more than there are: nothing can be added
        signed_headers = b"".join(signed)
        bh = base64.b64encode(body_hash(data, start))
        t = b"%d" % int(self._clock())
        listed = tuple(names)
        jobs = []
        for key in keys:
            template = self._templates.get((id(key), listed)) or self._template(key, listed)
            (w0, w1, w2), (c0, c1, c2) = template
            jobs.append((key, w0 + t + w1 + bh + w2, b"".join((signed_headers, c0, t, c1, bh, c2))))
        return data, jobs

    def _template(self, key: DkimKey, names: tuple[bytes, ...]) -> _Template:
        """`key`'s DKIM-Signature header for this list of signed names, as sent and canonicalised (made
        once, not per message), each in three pieces around the two values that change: t= and bh=."""
        header = (
            b"DKIM-Signature: v=1; a=%s; c=relaxed/relaxed;\r\n\td=%s; s=%s; t=\0;\r\n\th=%s;\r\n\tbh=\0;\r\n\tb="
            % (key.algorithm.encode(), key.domain.encode(), key.selector.encode(), _fold_list(list(names)))
        )
        wire, canon = header.split(b"\0"), relaxed_header(header)[:-2].split(b"\0")
        if len(wire) != 3 or len(canon) != 3:
            raise ValueError(f"a NUL in the DKIM domain or selector of {key.describe()}")
        template: _Template = ((wire[0], wire[1], wire[2]), (canon[0], canon[1], canon[2]))
        if len(self._templates) < 256:
            self._templates[(id(key), names)] = template
        return template


def _assemble(data: bytes, jobs: list[tuple[DkimKey, bytes, bytes]], sigs: list[bytes]) -> WireBytes:
    parts = [head + _fold_b64(sig, 70) + b"\r\n" for (_, head, _), sig in zip(jobs, sigs, strict=True)]
    parts.append(data)
    return WireBytes(b"".join(parts))


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
        signer = self.signer
        signed = signer.sign(data) if signer.pool is None else await signer.sign_async(data)
        return await super().send(sender, recipient, signed)
