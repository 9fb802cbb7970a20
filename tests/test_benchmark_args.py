"""Review 20: the benchmark scripts answer bad arguments with a sentence (argparse's usage + error, exit 2),
never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        (
            "lifecycle.py",
            ["--groups", "50", "--per-person", "5"],
            "--groups must be 20 × --per-person (each attribute has 20 values, one group each): with --per-person 5 use "
            "--groups 100.",
        ),
        (
            "lifecycle.py",
            ["--people", "10", "--leavers", "20"],
            "--leavers (20) can't be more than --people (10).",
        ),
        (
            "lifecycle.py",
            ["--import-rows", "0"],
            "argument --import-rows: 0 is too small; give a count of 1 or more.",
        ),
        ("crash_resume.py", ["--kills", "0"], "argument --kills: 0 is too small; give a count of 1 or more."),
        ("slack_ack.py", ["lots"], "argument requests: “lots” is not a whole number; give a count like 200."),
        ("template_render.py", ["-5"], "argument renders: -5 is too small; give a count of 1 or more."),
        (
            "group_fanout.py",
            ["--policy-requests", "0"],
            "argument --policy-requests: 0 is too small; give a count of 1 or more.",
        ),
        (
            "pipelining.py",
            ["--pairs", "0"],
            "argument --pairs: 0 is too small; give a count of 1 or more.",
        ),
        (
            "automations.py",
            ["--contacts", "0"],
            "argument --contacts: 0 is too small; give a count of 1 or more.",
        ),
    ],
)
def test_bad_benchmark_arguments_are_one_sentence(script: str, args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"{script}: error: {says}"
