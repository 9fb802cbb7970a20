"""Review 22: a campaign left `sending` by a stop is carried on by the campaign watcher alone (started
with the services, as `postroom serve` does); Runtime.resume_campaigns, which repeated it, is gone."""

from __future__ import annotations

import io
from collections import Counter

from adapters.console import ConsoleAdapter
from bot.app import Runtime, build_app
from bot.contacts.importer import import_contacts
from tests.conftest import HR, ChatBot, make_settings
from tests.test_campaign_delivery import CONSENTED, CSV, FAST, received, send, state_of, until


async def test_a_stopped_campaign_is_resumed_by_the_watcher(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def settings():  # type: ignore[no-untyped-def]
        return make_settings(
            database_url,
            smtp.port,
            tmp_path,
            campaigns={
                **FAST,
                "reports_dir": str(tmp_path / "reports"),
                "rate_per_s": 2,
                "batch_size": 1,
                "poll_s": 0.2,
            },
        )

    app = await build_app(settings())

    core = app.core
    console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
    app.attach(console)
    await console.start(core)
    (tmp_path / "contacts.csv").write_text(CSV)
    await import_contacts(core.ctx, tmp_path / "contacts.csv", "customers")
    bot = ChatBot(app, console, console.out)  # type: ignore[arg-type]
    await send(bot, "halfway")
    await until(lambda: len(smtp.messages) >= 1)
    await app.close()  # the process stops mid-campaign: it stays `sending`
    assert len(smtp.messages) < len(CONSENTED)

    again_app = await build_app(settings())
    runtime = Runtime(again_app)
    try:
        assert await state_of(ChatBot(again_app, console, console.out), "halfway") == "sending"  # type: ignore[arg-type]
        await runtime.start_services()
        await until(lambda: len(smtp.messages) >= len(CONSENTED), timeout=20)

        async def finished() -> bool:
            return await state_of(ChatBot(again_app, console, console.out), "halfway") != "sending"  # type: ignore[arg-type]

        await until(finished, timeout=10)
    finally:
        await runtime.stop()
    assert received(smtp) == Counter({e: 1 for e in CONSENTED})
