"""The fan-out's results are written while the copies go out, and never more than `relay.record_every`
copies are sent and not yet written: a database that can't take a write for a while lets exactly that many
out, then holds the fan-out, and once the write commits every member has one copy. (The fan-out used to
stop sending for every write, and let the copies in flight on the other connections out beyond the bound.)
"""

from __future__ import annotations

import asyncio
import threading

import aiosmtplib
from aiosmtpd.controller import Controller
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import Runtime, build_app
from bot.db.models import Group, GroupPost, GroupPostDelivery, Membership
from bot.groups import planner
from tests.conftest import make_settings
from tests.group_mail_kit import deliveries, fanned_out, until
from tests.lifecycle_kit import write_rules
from tests.smtp import RecordingHandler, free_port
from tests.test_group_posts import mail

MEMBERS = [f"m{i:02d}@corp.example" for i in range(40)]
RECORD_EVERY = 10
CONNECTIONS = 4


class FirstCopyWaits(RecordingHandler):
    """Holds its answer to the first copy until the test says the database is locked."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.go_on = threading.Event()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if not self.arrived.is_set():
            self.arrived.set()
            self.go_on.wait(20)
        return await super().handle_DATA(server, session, envelope)


async def test_a_write_that_waits_holds_the_fan_out_at_record_every_and_nobody_is_lost(  # type: ignore[no-untyped-def]
    database_url, tmp_path
) -> None:
    handler = FirstCopyWaits()
    sink = Controller(handler, hostname="127.0.0.1", port=free_port(), decode_data=False)
    sink.start()
    relay_port = free_port()
    rules = write_rules(tmp_path, "groups:\n  - address: all-staff\n    post: company\n")
    relay = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": relay_port,
        "batch_size": 100,
        "record_every": RECORD_EVERY,
        "connections": CONNECTIONS,
    }
    settings = make_settings(
        database_url, sink.port, tmp_path, relay=relay, groups={"rules_file": str(rules)}
    )
    app = await build_app(settings)
    runtime = Runtime(app)
    locker = create_async_engine(database_url)
    try:
        async with app.ctx.sessions() as session, session.begin():
            await planner.sync_group_definitions(
                session, app.rules.current(), settings, actor="test", via="test"
            )
            group_id = (
                await session.execute(select(Group.id).where(Group.address == "all-staff@corp.example"))
            ).scalar_one()
            await session.execute(
                insert(Membership), [{"group_id": group_id, "email": e, "source": "import"} for e in MEMBERS]
            )
        await runtime.start_services()
        sending = asyncio.create_task(
            aiosmtplib.send(
                mail("hannah@corp.example", "all-staff@corp.example"),
                sender="hannah@corp.example",
                recipients=["all-staff@corp.example"],
                hostname="127.0.0.1",
                port=relay_port,
            )
        )
        await until(handler.arrived.is_set)
        async with app.ctx.sessions() as session:
            post_id = (await session.execute(select(GroupPost.id))).scalar_one()
        async with locker.connect() as conn:
            # An open write on the post's deliveries: SQLite's one writer, PostgreSQL's row locks. The
            # fan-out's writes wait behind it (its claim of the next batch too) while its sends go on.
            await conn.execute(
                update(GroupPostDelivery)
                .where(GroupPostDelivery.post_id == post_id)
                .values(attempts=GroupPostDelivery.attempts)
            )
            handler.go_on.set()
            await until(lambda: len(handler.messages) >= RECORD_EVERY)
            await asyncio.sleep(0.5)  # room for any copy beyond the bound to arrive (none may)
            assert len(handler.messages) == RECORD_EVERY, (
                f"{len(handler.messages)} copies out while none could be written; at most {RECORD_EVERY}"
            )
            await conn.rollback()
        await sending
        (done,) = await fanned_out(app)
        assert done.state == "delivered"
        copies = sorted(r for m in handler.messages for r in m.rcpt_tos)
        assert copies == MEMBERS  # each member once
        assert set((await deliveries(app, post_id)).values()) == {"sent"}
    finally:
        handler.go_on.set()
        await runtime.stop_services()
        await app.close()
        await locker.dispose()
        sink.stop()
