"""A render process: `python -m bot.campaigns.render_worker`, started and fed by bot/campaigns/render_pool.py.

It reads requests from stdin and writes replies to stdout, each frame an 8-byte length and a pickle. A
request carries only plain data — the template's name, HTML and text source, the subject, the time budget,
the recipient's context dict and the locale — and the template is compiled here, kept by a hash of its
source (a preview and the review before it render the same campaign). The render is stopped at its budget
by the same watchdog as in the server (bot/campaigns/render_time.py); a render the watchdog cannot stop
(C code) is the pool's to kill.

It exits when stdin ends: the pool closed it, or the server died (even by kill -9, the kernel closes
the server's end of the pipe). A thread reads stdin for that reason, so it notices while a render runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import signal
import struct
import sys
import threading
from collections import OrderedDict
from typing import Any, BinaryIO

from bot import i18n
from bot.campaigns.templates import CompiledTemplate, TemplateProblem, TemplateSource, TemplateTimeout

HEADER = struct.Struct(">Q")
MAX_FRAME = 64 * 1024 * 1024  # a request is a template (bounded by the files) and one recipient's values
COMPILED_KEPT = 16


def read_frame(stream: BinaryIO) -> Any:
    """The next frame's object, or EOFError at the end of the stream."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise EOFError
    body = stream.read(size)
    if len(body) < size:
        raise EOFError
    return pickle.loads(body)


def frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def template_key(name: str, html: str, text: str | None, subject: str) -> str:
    h = hashlib.sha256()
    for part in (name, html, text if text is not None else "\x00none", subject):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc), or its peak where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Renderer:
    def __init__(self) -> None:
        self._compiled: OrderedDict[str, CompiledTemplate | TemplateProblem] = OrderedDict()

    def _template(self, name: str, html: str, text: str | None, subject: str) -> CompiledTemplate:
        key = template_key(name, html, text, subject)
        found = self._compiled.get(key)
        if found is None:
            try:
                found = CompiledTemplate(TemplateSource(name, html, text), subject)
            except TemplateProblem as exc:
                found = exc
            self._compiled[key] = found
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        if isinstance(found, TemplateProblem):
            raise found
        return found

    def handle(self, request: dict[str, Any]) -> tuple[Any, ...]:
        with i18n.using(request["locale"]):
            try:
                template = self._template(
                    request["name"], request["html"], request["text"], request["subject"]
                )
                template.time_budget_s = request["budget_s"]
                r = template.render(request["context"])
            except TemplateTimeout as exc:
                return ("timeout", exc.sentence)
            except TemplateProblem as exc:
                return ("problem", exc.sentence)
            return ("ok", r.subject, r.html, r.text)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the server stops this process, not the key.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies go to the stdout we were given; anything printed by accident goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        try:
            while True:
                requests.put(read_frame(sys.stdin.buffer))
        except BaseException:
            pass
        os._exit(0)  # stdin ended: the pool is done with us, or the server is gone

    threading.Thread(target=read, name="postroom-render-requests", daemon=True).start()
    renderer = Renderer()
    out.write(frame(("ready", os.getpid())))
    out.flush()
    while True:
        request = requests.get()
        try:
            reply = renderer.handle(request)
        except Exception as exc:  # a bug here, not the template's: say it rather than die silently
            reply = ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
        out.write(frame((*reply, resident_bytes())))
        out.flush()


if __name__ == "__main__":
    main()
