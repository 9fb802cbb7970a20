"""What the DKIM tests share: keys made by `postroom dkim keygen` (RSA-2048 and Ed25519) with the DNS
records it printed, and verification of every signature of a message by dkimpy, an independent
implementation of RFC 6376 and RFC 8463."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import dkim
from click.testing import CliRunner

from bot.cli import main

DOMAIN = "corp.example"


@dataclass
class Keys:
    """Key files and the TXT records DNS would hold for them."""

    folder: Path
    records: dict[str, bytes] = field(default_factory=dict)  # "<selector>._domainkey.<domain>" -> TXT
    files: dict[str, Path] = field(default_factory=dict)  # selector -> key file

    def make(self, selector: str, algorithm: str = "rsa", domain: str = DOMAIN) -> Path:
        out = self.folder / f"{domain}.{selector}.pem"
        result = CliRunner().invoke(
            main, ["dkim", "keygen", domain, selector, "--algorithm", algorithm, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        m = re.search(r"^(\S+)\. IN TXT \( (.+) \)$", result.output, re.M)
        assert m is not None, result.output
        self.records[m.group(1)] = "".join(re.findall(r'"([^"]*)"', m.group(2))).encode()
        self.files[selector] = out
        return out

    def section(self, *selectors: str, domain: str = DOMAIN) -> dict[str, list[dict[str, str]]]:
        return {
            "keys": [{"domain": domain, "selector": s, "key_file": str(self.files[s])} for s in selectors]
        }

    def dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.records.get(name.decode().rstrip("."))


def verified(data: bytes, keys: Keys) -> list[tuple[str, str, str]]:
    """(d=, s=, a=) of each DKIM-Signature of `data`, every one verified by dkimpy; AssertionError
    naming the first that does not verify. A message without a signature verifies nothing."""
    count = len(re.findall(rb"(?im)^DKIM-Signature:", data))
    checker = dkim.DKIM(data, minkey=1024)
    found = []
    for i in range(count):
        try:
            ok = checker.verify(idx=i, dnsfunc=keys.dns)
        except dkim.DKIMException as exc:  # dkimpy raises for some failures, returns False for others
            raise AssertionError(f"signature {i} does not verify: {exc}") from None
        assert ok, f"signature {i} does not verify: {checker.signature_fields}"
        sig = checker.signature_fields
        found.append((sig[b"d"].decode(), sig[b"s"].decode(), sig[b"a"].decode()))
    return found
