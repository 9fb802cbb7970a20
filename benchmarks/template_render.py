"""What Postroom's template guards cost per recipient, beside a plain Jinja2 sandbox (the baseline).

Renders the demo's `welcome` template (subject, HTML, text) N times each way, in the same run.
Usage: .venv/bin/python benchmarks/template_render.py [N]    Last line: one JSON object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from bot.campaigns.templates import CompiledTemplate, TemplateSource

TEMPLATES = Path(__file__).parents[1] / "bot" / "demo_data" / "templates"
SUBJECT = "Spring news for {{ first_name }}"
CONTEXT = {
    "first_name": "Lena",
    "name": "Lena Fischer",
    "company": "Fischer GmbH",
    "email": "lena@example.com",
    "unsubscribe_url": "https://postroom.corp.example/u/token",
    "org": {"name": "Example Corp", "postal_address": "1 Example Street, Berlin"},
}


def per_render(render, n: int) -> float:  # type: ignore[no-untyped-def]
    render()
    start = time.perf_counter()
    for _ in range(n):
        render()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    import argparse

    from common import count

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("renders", nargs="?", type=count, default=20_000)
    n = parser.parse_args().renders
    html, text = (TEMPLATES / "welcome.html").read_text(), (TEMPLATES / "welcome.txt").read_text()
    ours = CompiledTemplate(TemplateSource("welcome", html, text), SUBJECT)
    plain_html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
    plain_text = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    parts = (plain_text.from_string(SUBJECT), plain_html.from_string(html), plain_text.from_string(text))

    def baseline() -> None:
        for part in parts:
            part.render(CONTEXT)

    base_us = per_render(baseline, n)
    ours_us = per_render(lambda: ours.render(CONTEXT), n)
    print(f"plain Jinja2 sandbox (baseline): {base_us:.1f} µs per recipient")
    print(f"Postroom CompiledTemplate:       {ours_us:.1f} µs per recipient ({ours_us / base_us:.2f}x)")
    print(
        json.dumps(
            {
                "renders": n,
                "baseline_us": round(base_us, 2),
                "postroom_us": round(ours_us, 2),
                "ratio": round(ours_us / base_us, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
