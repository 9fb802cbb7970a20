"""The benchmarks sign with a fresh secret each run (invariant 9: no built-in secret), one that
`postroom serve`'s secret policy accepts: a fixed string in the source is refused by serve, and would be
a secret anyone can read."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bot.config import load_settings
from bot.secret_policy import serving_problem

ROOT = Path(__file__).resolve().parents[1]
# a Postroom secret written as a literal: secret = "…", "secret": "…", webhook_secret="…", WEB_SECRET = "…"
LITERAL = re.compile(
    r"""(?i)\b["']?(web_secret|secret|webhook_secret|api_key)["']?\s*[:=]\s*["']([^"'{}]+)["']"""
)
# secrets of the fake platforms (they must match the fakes' own), not Postroom's signing secrets
FAKES = {"app-secret", "ding-secret"}


def test_no_benchmark_writes_a_fixed_secret() -> None:
    found = [
        f"{path.name}: {m.group(0)}"
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        for m in LITERAL.finditer(path.read_text())
        if m.group(2) not in FAKES
    ]
    assert found == []


def test_the_oversize_benchmarks_configuration_is_one_serve_accepts(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from benchmarks import oversize_bodies
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    path = oversize_bodies.config(tmp_path, 8080, "http://127.0.0.1:1", "http://127.0.0.1:2")
    settings = load_settings(path, read_env=False)
    assert serving_problem(settings) is None
    again = load_settings(
        oversize_bodies.config(tmp_path, 8080, "http://127.0.0.1:1", "http://127.0.0.1:2"), read_env=False
    )
    assert again.web.secret != settings.web.secret  # a fresh one each run
