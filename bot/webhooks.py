"""What Postroom's signed webhooks share (`/hooks/hr`, `/hooks/email-events`): a refusal that carries
its HTTP status and one sentence, and reading a request body with a size cap.

The cap is enforced while reading: a declared Content-Length over the cap is refused before a byte
of the body is read, and a body sent without one (chunked) is refused as soon as it passes the cap,
so an oversize request never sits in memory whole.
"""

from __future__ import annotations

from starlette.requests import Request


class Refused(Exception):
    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status
        self.sentence = sentence


async def read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, "The Content-Length header is not a number.")
        if int(declared) > cap:
            raise Refused(413, f"The body is larger than the {cap} bytes this webhook accepts.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise Refused(413, f"The body is larger than the {cap} bytes this webhook accepts.")
    return bytes(body)
