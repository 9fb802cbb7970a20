"""A small, fast SMTP sink that writes the recipient of every accepted message to a file, one per line.

Used by crash_resume.py and multi_worker.py to count what arrived (lost and duplicated), and as
the throughput sink when Postfix's smtp-sink is not installed. Run: recording_sink.py PORT FILE

It offers PIPELINING (RFC 2920), as smtp-sink and Postfix do: it answers the commands in its buffer one
after another, in order, which is all a pipelining client needs.
"""

from __future__ import annotations

import asyncio
import sys


class SinkProtocol(asyncio.Protocol):
    def __init__(self, out) -> None:  # type: ignore[no-untyped-def]
        self.out = out
        self.buf = b""
        self.in_data = False
        self.rcpts: list[bytes] = []

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    self.buf = self.buf[-4:]  # keep the tail in case the terminator is split
                    return
                self.buf = self.buf[end + 5 :]
                self.in_data = False
                self.out.write(b"".join(r + b"\n" for r in self.rcpts))
                self.rcpts = []
                self.transport.write(b"250 2.0.0 queued\r\n")
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                return
            line, self.buf = self.buf[:nl], self.buf[nl + 2 :]
            verb = line[:4].upper()
            if verb in (b"EHLO",):
                self.transport.write(
                    b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 52428800\r\n250 SMTPUTF8\r\n"
                )
            elif verb == b"HELO":
                self.transport.write(b"250 sink\r\n")
            elif verb == b"MAIL":
                self.rcpts = []
                self.transport.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                addr = line[line.find(b"<") + 1 : line.rfind(b">")].lower()
                self.rcpts.append(addr)
                self.transport.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:  # RSET, NOOP and the rest
                self.transport.write(b"250 ok\r\n")


async def main(port: int, path: str) -> None:
    with open(path, "ab", buffering=0 if path == "/dev/null" else 65536) as out:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(out), "127.0.0.1", port, backlog=1024)
        flusher = loop.create_task(_flush(out))
        try:
            await server.serve_forever()
        finally:
            flusher.cancel()
            out.flush()


async def _flush(out) -> None:  # type: ignore[no-untyped-def]
    while True:
        await asyncio.sleep(0.2)
        out.flush()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
    except KeyboardInterrupt:
        pass
