"""A Postroom process that runs only the embedded relay and the group fan-out, for the kill -9 test:

python -m tests.relay_process postroom.toml
"""

from __future__ import annotations

import asyncio
import sys

from bot.app import Runtime, build_app
from bot.config import load_settings


async def main(path: str) -> None:
    settings = load_settings(path, read_env=False)
    app = await build_app(settings)
    runtime = Runtime(app)
    await runtime.start_mail(settings.relay.host, settings.relay.port, app.mail_routes())
    app.group_mail.fanout.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
