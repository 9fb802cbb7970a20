"""The spam score of a campaign's sample message, by SpamAssassin when the server has it.

`/campaign preview`, the web preview, submit and the approval card show the score of the review's sample
as it would be sent (bot/campaigns/messages.py `spam_sample`): `spamassassin -t -L` reads the message on
stdin in a process of its own, with local tests only (-L: no DNS blocklists, no network), no Bayes and no
user preferences written, under `campaigns.spam_timeout_s`; its output is read up to a bound. A score at
or above `campaigns.spam_threshold` stops a submit with a sentence naming the rules that fired.

`campaigns.spam_check`: "auto" (the default) scores when `spamassassin` is on the PATH and says nothing when
it isn't — most servers don't have it, and a line in every preview that only an admin could act on is
noise; "required" refuses a submit without a score (not installed, failed, timed out); "off" never runs
it. A failure or a timeout of SpamAssassin is not the sender's fault: under "auto" it is said and blocks
nothing.

Scores are kept by the content scored (a review runs more than once: the preview, the submit, the web
preview), so the same sample is scored once; failures are not kept, the next review tries again.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections import OrderedDict
from dataclasses import dataclass

from bot.config import CampaignSettings
from bot.context import Context
from bot.i18n import t

PACKAGE = "spamassassin"  # the Debian package that has the command
# Local tests only, no Bayes database, no ~/.spamassassin created.
ARGS = ("-t", "-L", "-x", "--cf=use_bayes 0")
EXTRA_OUTPUT = 256 * 1024  # what -t may add to the message it echoes: its headers and report
MAX_KEPT = 64
TOP = 5  # rules shown with a score
TOP_REFUSED = 3  # rules named when a submit is refused

_STATUS = re.compile(r"^X-Spam-Status:((?:.*)(?:\r?\n[ \t].*)*)", re.M | re.I)
_SCORE = re.compile(r"\bscore=(-?\d+(?:\.\d+)?)")
_TESTS = re.compile(r"\btests=([A-Za-z0-9_,\s]*?)(?:\s+\w+=|\s*$)")
_RULE_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")


@dataclass(frozen=True)
class Rule:
    name: str
    points: float
    description: str = ""


@dataclass(frozen=True)
class Score:
    points: float
    rules: tuple[Rule, ...]  # most points first


@dataclass(frozen=True)
class Outcome:
    """A score, or why there is none: `missing` (not installed) or a `failure` of SpamAssassin."""

    score: Score | None = None
    missing: bool = False
    failure: str | None = None  # "timeout", "exit" (status in `detail`), "overflow", "unreadable", "start"
    detail: str = ""


class ScoreUnreadable(Exception):
    pass


def parse(output: str) -> Score:
    """The score and rules in `spamassassin -t` output: the score from its X-Spam-Status header, each rule's
    points and description from the report it appends (the last one: the message's own text comes first)."""
    head = output.split("\n\n", 1)[0].replace("\r\n", "\n")
    status = _STATUS.search(head)
    if status is None:
        raise ScoreUnreadable("no X-Spam-Status header")
    value = " ".join(status.group(1).split())
    found = _SCORE.search(value)
    if found is None:
        raise ScoreUnreadable("no score in X-Spam-Status")
    tests = _TESTS.search(value)
    names = [n.strip() for n in (tests.group(1) if tests else "").split(",") if n.strip() and n != "none"]
    described: dict[str, Rule] = {}
    start = output.rfind("Content analysis details")
    if start >= 0:
        last: Rule | None = None
        for line in output[start:].splitlines()[1:]:
            m = _RULE_LINE.match(line)
            if m:
                last = Rule(m.group(2), float(m.group(1)), m.group(3).strip())
                described[last.name] = last
            elif last is not None and line.startswith(" " * 20) and line.strip():
                last = Rule(last.name, last.points, f"{last.description} {line.strip()}")
                described[last.name] = last
            elif last is not None and not line.strip():
                break
    rules = [described.get(name, Rule(name, 0.0)) for name in names]
    rules += [r for name, r in described.items() if name not in names]
    rules.sort(key=lambda r: (-r.points, r.name))
    return Score(float(found.group(1)), tuple(rules))


async def run_bounded(argv: list[str], data: bytes, timeout_s: float, limit: int) -> tuple[int, bytes]:
    """`argv` fed `data` on stdin: its exit status and stdout, read up to `limit` bytes. The process is
    killed when it outlives `timeout_s` (TimeoutError) or writes more than `limit` (ScoreUnreadable)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a kill reaches what it started too
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: its exit status says why
        finally:
            stdin.close()

    async def talk() -> tuple[int, bytes]:
        out = bytearray()
        while True:
            chunk = await stdout.read(65536)
            if not chunk:
                break
            out += chunk
            if len(out) > limit:
                raise ScoreUnreadable(f"more than {limit} bytes of output")
        return await proc.wait(), bytes(out)

    feeder = asyncio.create_task(feed())
    try:
        return await asyncio.wait_for(talk(), timeout_s)
    finally:
        if proc.returncode is None:
            _kill_group(proc)
            # wait() returns once its pipes are closed too, and a reader past its buffer stops reading:
            # read what the killed process left, to the end of its pipe — bounded, for a child that got
            # out of the group and still holds the pipe (a fake that ignored TERM held every preview
            # behind the one-at-a-time lock for minutes).
            try:
                await asyncio.wait_for(_drain_and_wait(proc, stdout), KILL_GRACE_S)
            except TimeoutError:
                transport = getattr(proc, "_transport", None)
                if transport is not None:
                    transport.close()
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)


KILL_GRACE_S = 2.0  # after the kill, how long its pipe may take to close


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def _drain_and_wait(proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader) -> None:
    while await stdout.read(65536):
        pass
    await proc.wait()


class SpamChecker:
    """Scores messages with SpamAssassin, one run at a time (a run is a ~120 MB Perl process), keeping
    the last MAX_KEPT scores by content."""

    def __init__(self, settings: CampaignSettings):
        self.settings = settings
        self._kept: OrderedDict[str, Score] = OrderedDict()
        self._one_at_a_time = asyncio.Semaphore(1)
        self.runs = 0  # SpamAssassin runs started, for the curious and the tests

    def command(self) -> list[str] | None:
        found = shutil.which("spamassassin")
        return [found, *ARGS] if found else None

    async def check(self, message: bytes, key: str) -> Outcome:
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return Outcome(kept)
        argv = self.command()
        if argv is None:
            return Outcome(missing=True)
        async with self._one_at_a_time:
            kept = self._kept.get(key)  # scored while this one waited
            if kept is not None:
                return Outcome(kept)
            self.runs += 1
            try:
                status, out = await run_bounded(
                    argv, message, self.settings.spam_timeout_s, len(message) + EXTRA_OUTPUT
                )
            except TimeoutError:
                return Outcome(failure="timeout")
            except ScoreUnreadable:
                return Outcome(failure="overflow")
            except OSError as exc:
                return Outcome(failure="start", detail=exc.strerror or type(exc).__name__)
        if status != 0:
            return Outcome(failure="exit", detail=str(status))
        try:
            score = parse(out.decode("utf-8", "replace"))
        except ScoreUnreadable:
            return Outcome(failure="unreadable")
        self._kept[key] = score
        while len(self._kept) > MAX_KEPT:
            self._kept.popitem(last=False)
        return Outcome(score)


def of(ctx: Context) -> SpamChecker:
    """The app's checker, made on first use and kept in the context (its scores with it)."""
    found = ctx.extras.get("spam_checker")
    if not isinstance(found, SpamChecker):
        found = ctx.extras["spam_checker"] = SpamChecker(ctx.settings.campaigns)
    return found


def _rules(rules: tuple[Rule, ...]) -> str:
    return ", ".join(f"{r.name} {r.points:.1f}" for r in rules)


def line(outcome: Outcome | None, settings: CampaignSettings) -> str | None:
    """What a preview says about the score (a line of its own); None when there is nothing to say."""
    found = value(outcome, settings)
    return None if found is None else t("Spam score: {value}", value=found)


def value(outcome: Outcome | None, settings: CampaignSettings) -> str | None:
    """The score and the rules that weigh most, or why there is none: the approval card's field. None
    under "auto" without SpamAssassin, and for a score that stops the submit (`problem` says it)."""
    if outcome is None or (outcome.missing and settings.spam_check == "auto"):
        return None
    threshold = f"{settings.spam_threshold:.1f}"
    if outcome.score is not None:
        score = outcome.score
        if score.points >= settings.spam_threshold:
            return None  # a problem of the review: `problem` says it, with the rules
        text = t(
            "{score} (SpamAssassin; below {threshold})", score=f"{score.points:.1f}", threshold=threshold
        )
        return f"{text}: {_rules(score.rules[:TOP])}" if score.rules else text
    if outcome.missing:
        return t("none — SpamAssassin is not installed (Debian package {package}).", package=PACKAGE)
    if outcome.failure == "timeout":
        return t(
            "none — SpamAssassin did not answer within {seconds} seconds. That is the server's "
            "trouble, not the message's.",
            seconds=f"{settings.spam_timeout_s:g}",
        )
    return t(
        "none — SpamAssassin failed ({detail}). That is the server's trouble, not the message's.",
        detail=_failure(outcome),
    )


def _failure(outcome: Outcome) -> str:
    if outcome.failure == "exit":
        return t("exit status {status}", status=outcome.detail)
    if outcome.failure == "overflow":
        return t("it wrote more than it may")
    if outcome.failure == "start":
        return t("it could not be started: {reason}", reason=outcome.detail)
    return t("its answer had no score")


def problem(outcome: Outcome | None, settings: CampaignSettings) -> str | None:
    """Why the score stops a submit, as a sentence; None when it doesn't."""
    if outcome is None:
        return None
    if outcome.score is not None:
        score = outcome.score
        if score.points < settings.spam_threshold:
            return None
        return t(
            "The sample message scores {score} in SpamAssassin, at or above the limit of {threshold} "
            "(campaigns.spam_threshold); the rules that weigh most: {rules}. Change what they point at.",
            score=f"{score.points:.1f}",
            threshold=f"{settings.spam_threshold:.1f}",
            rules=_rules(score.rules[:TOP_REFUSED]) or t("none named"),
        )
    if settings.spam_check != "required":
        return None  # not installed, or the server's failure: blocks nothing under "auto"
    if outcome.missing:
        return t(
            "SpamAssassin is not installed and campaigns.spam_check is “required”: install the Debian "
            "package {package} on the server (or set spam_check to “auto”).",
            package=PACKAGE,
        )
    return t(
        "SpamAssassin could not score the sample message and campaigns.spam_check is “required”; that is "
        "the server's trouble, not the message's: try again, or ask an admin to look at SpamAssassin."
    )
