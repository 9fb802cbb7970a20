"""Previews and reviews render in render processes (bot/campaigns/render_pool.py), not in the server: a
bomb is stopped at its budget there, a worker that does not answer is killed and replaced, a worker is
recycled, and no worker outlives the app — nor a server killed with kill -9. Real processes, real pipes,
real database; the one thing simulated is a render stuck in C code, by stopping the worker (SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from adapters.console import ConsoleAdapter
from bot.app import build_app
from bot.campaigns import render_pool
from bot.campaigns.render_pool import RenderPool
from bot.campaigns.templates import TemplateSource, TemplateTimeout
from bot.contacts.importer import import_contacts
from tests.conftest import SENDER, make_settings
from tests.test_campaign_delivery import make_bot
from tests.test_cli import CONTACTS, SAM, Setup, served, setup
from tests.test_render_budget import BOMB, FOOTER, write_template

__all__ = ["make_bot", "setup"]  # the fixtures, used by name

SENTENCE = "Template bomb took longer than {s} s to render and was stopped (a loop that runs too long?)."
ROOT = Path(__file__).resolve().parents[1]


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, None when it has exited (gone, or a zombie nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return None if state in ("Z", "X") else int(ppid)


def render_children() -> list[int]:
    """This process's live children that are render processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"bot.campaigns.render_worker" in cmdline:
                found.append(int(entry.name))
    return found


async def wait_for(condition, what: str, bound_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {bound_s} s: {what}")


async def test_a_bomb_preview_runs_in_a_render_process_and_is_stopped_there_at_its_budget(
    make_bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(render_timeout_s=0.5)
    write_template(tmp_path, "bomb", BOMB)
    assert "Draft campaign" in await bot.say(
        SENDER, "/campaign new spin --to customers --template bomb --subject Hi"
    )
    pool = render_pool.of(bot.core.ctx)
    assert pool is not None and pool.pids() == []  # started on the first render, not with the app
    preview = asyncio.create_task(bot.say(SENDER, "/campaign preview spin"))
    (worker,) = await wait_for(pool.busy_pids, "a render process busy with the bomb")
    assert worker != os.getpid() and parent_of(worker) == os.getpid()  # a child process renders it
    assert SENTENCE.format(s="0.5") in await preview
    assert pool.replaced == 0 and pool.pids() == [worker]  # its own watchdog stopped it: kept, reused
    assert "Draft campaign" in await bot.say(SENDER, "/campaign new fine --to customers --template welcome")
    reply = await bot.say(SENDER, "/campaign preview fine")
    assert "Hello Lena" in reply, reply
    assert pool.pids() == [worker] and set(pool.recent) == {worker}


async def test_a_render_process_that_does_not_answer_is_killed_at_the_deadline_and_replaced(
    make_bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A render stuck where the watchdog can't reach (C code) is simulated by stopping the process."""
    bot = await make_bot(render_timeout_s=0.5)
    write_template(tmp_path, "bomb", BOMB)
    assert "Draft campaign" in await bot.say(
        SENDER, "/campaign new spin --to customers --template bomb --subject Hi"
    )
    pool = render_pool.of(bot.core.ctx)
    assert pool is not None
    preview = asyncio.create_task(bot.say(SENDER, "/campaign preview spin"))
    (stuck,) = await wait_for(pool.busy_pids, "a render process busy with the bomb")
    os.kill(stuck, signal.SIGSTOP)
    assert SENTENCE.format(s="0.5") in await preview  # the same sentence as a render its watchdog stops
    assert pool.replaced == 1 and parent_of(stuck) is None  # killed and reaped
    assert "Draft campaign" in await bot.say(SENDER, "/campaign new fine --to customers --template welcome")
    reply = await bot.say(SENDER, "/campaign preview fine")
    assert "Hello Lena" in reply, reply  # a fresh process rendered it
    (fresh,) = pool.pids()
    assert fresh != stuck and parent_of(fresh) == os.getpid()


async def test_a_render_process_is_recycled_after_its_renders_or_past_its_memory() -> None:
    source = TemplateSource("hi", "<p>Hello {{ name }}</p>", None)
    for pool in (RenderPool(1, max_renders=1), RenderPool(1, max_bytes=1)):
        try:
            pids = []
            for name in ("Ada", "Bo"):
                rendered = await pool.render(source, "Hi {{ name }}", {"name": name}, 1.0)
                assert rendered.html == f"<p>Hello {name}</p>" and rendered.subject == f"Hi {name}"
                pids.append(pool.recent[-1])
                assert pool.pids() == []  # recycled after its one render (or at once: 1 byte of memory)
                assert parent_of(pids[-1]) is None
            assert pids[0] != pids[1]
        finally:
            await pool.close()
    stopped = RenderPool(1)
    try:
        try:
            await stopped.render(TemplateSource("bomb", BOMB, None), "Hi", {"first_name": "A"}, 0.2)
        except TemplateTimeout as exc:
            assert "Template bomb took longer than 0.2 s" in exc.sentence
        else:
            raise AssertionError("the bomb was not stopped")
    finally:
        await stopped.close()


async def test_no_render_process_outlives_the_app(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, 2525, tmp_path, campaigns={"render_timeout_s": 0.3})
    write_template(tmp_path, "bomb", BOMB)
    app = await build_app(settings)
    console = ConsoleAdapter(SENDER, out=io.StringIO(), prompt=False)
    app.attach(console)
    await console.start(app.core)
    try:
        contacts = tmp_path / "contacts.csv"
        contacts.write_text(
            "email,name,consent_at,consent_source\nlena@example.com,Lena,2026-03-02T10:15:00+00:00,form\n"
        )
        await import_contacts(app.core.ctx, contacts, "customers")
        reply = await console.say("/campaign new spin --to customers --template bomb --subject Hi")
        assert reply is not None and "Draft campaign" in reply.text, reply
        pool = render_pool.of(app.core.ctx)
        assert pool is not None
        preview = asyncio.create_task(console.say("/campaign preview spin"))
        await wait_for(pool.busy_pids, "a render process busy with the bomb")
        workers = render_children()
        assert workers and set(workers) == set(pool.pids())
    finally:
        await app.close()  # while the bomb still renders: a busy worker is stopped too
    await preview
    assert render_children() == [] and all(parent_of(pid) is None for pid in workers)


async def test_render_processes_exit_when_the_server_is_killed_with_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            sys.path.insert(0, sys.argv[1])
            from bot.campaigns.render_pool import RenderPool
            from bot.campaigns.templates import TemplateSource

            async def main():
                pool = RenderPool(2)
                source = TemplateSource("hi", "<p>{{ n }}</p>", None)
                await asyncio.gather(*(pool.render(source, "Hi", {"n": n}, 5.0) for n in range(2)))
                print(" ".join(map(str, pool.pids())), flush=True)
                await asyncio.sleep(3600)

            asyncio.run(main())
            """
        )
    )
    server = subprocess.Popen([sys.executable, str(script), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30)
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and all(parent_of(p) == server.pid for p in workers), line
    finally:
        server.kill()  # SIGKILL: nothing in the server runs, nothing closes the pool
        server.wait()
    await wait_for(lambda: all(parent_of(p) is None for p in workers), "the render processes exited")


def serve_children(pid: int) -> list[int]:
    """The live render processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            with contextlib.suppress(OSError):
                if b"bot.campaigns.render_worker" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_postroom_serve_leaves_no_render_process_behind(setup: Setup, stop: str) -> None:
    """`postroom serve` stopped while a bomb preview renders: by SIGTERM it stops its render processes
    itself; killed with SIGKILL, they see their pipe close and exit."""
    (setup.folder / "contacts.csv").write_text(CONTACTS)
    assert setup.run("contacts", "import", "contacts.csv", "--list", "customers").returncode == 0
    (setup.folder / "templates" / "bomb.html").write_text(BOMB)
    assert "Draft campaign" in setup.chat(
        SAM, "/campaign new spin --to customers --template bomb --subject Hi"
    )
    url = re.search(r"HTML preview: (\S+)", setup.chat(SAM, "/campaign preview spin"))
    assert url is not None
    path = urlsplit(url.group(1)).path
    with served(setup) as proc:
        with httpx.Client(base_url=f"http://127.0.0.1:{setup.web_port}", timeout=30) as http:
            assert http.get(path).status_code == 422  # rendered (and stopped) in a render process
        (worker,) = serve_children(proc.pid)
        if stop == "SIGKILL":
            proc.kill()
            proc.communicate()
    deadline = time.monotonic() + 20
    while parent_of(worker) is not None:
        assert time.monotonic() < deadline, f"render process {worker} still runs after serve's {stop}"
        time.sleep(0.02)


async def test_a_render_process_answers_in_the_readers_language(make_bot, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The sentence is made in the render process, in the locale of the person who asked."""
    bot = await make_bot()
    bot.console.locale = "zh_CN"
    write_template(tmp_path, "odd", "<p>{{ shoe_size }}</p>" + FOOTER)
    assert "已创建群发活动草稿" in await bot.say(
        SENDER, "/campaign new odd --to customers --template odd --subject Hi"
    )
    reply = await bot.say(SENDER, "/campaign preview odd")
    assert "模板使用了该收件人没有的变量：" in reply, reply
    pool = render_pool.of(bot.core.ctx)
    assert pool is not None and pool.recent and os.getpid() not in pool.recent
