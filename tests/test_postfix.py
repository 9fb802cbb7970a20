"""Postfix does the fan-out, Postroom keeps the policy: a private, real Postfix instance expands the group
addresses from Postroom's database (the manifests' lookup table) and asks Postroom's policy service about
every post; a moderated post waits in Postfix's hold queue until an approval click releases it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from bot.db.models import GroupPost
from tests.conftest import HR
from tests.group_mail_kit import until
from tests.postfix_instance import PostfixInstance, free_port, lookup_table, missing, shared_dir
from tests.test_group_posts import held_cards, mail, running

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def open_to_postfix(folder: Path) -> None:
    for path in folder.glob("postroom.db*"):
        path.chmod(0o666)


async def test_postfix_delivers_groups_with_postroom_policy_and_holds_for_moderators(
    database_url, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    folder = shared_dir("postroom-postfix-")
    url = (
        f"sqlite+aiosqlite:///{folder / 'postroom.db'}" if database_url.startswith("sqlite") else database_url
    )
    policy_port = free_port()
    postfix = {"policy_enabled": True, "policy_port": policy_port, "config_directory": str(folder / "etc")}
    async for bot, _relay_port in running(url, smtp.port, tmp_path, postfix=postfix):
        open_to_postfix(folder)
        instance = PostfixInstance(
            folder, sink_port=smtp.port, alias_maps=lookup_table(folder, url), policy_port=policy_port
        )
        await asyncio.to_thread(instance.start)
        try:
            # a member posts: Postfix expands eng@ from Postroom's database, every member gets it once
            await aiosmtplib.send(
                mail("alice@corp.example", "eng@corp.example"),
                sender="alice@corp.example",
                recipients=["eng@corp.example"],
                hostname="127.0.0.1",
                port=instance.port,
            )
            members = ["alice@corp.example", "bob@corp.example", "fwd@corp.example"]
            await until(lambda: sorted(r for m in smtp.messages for r in m.rcpt_tos) == members, 30)  # noqa: B023 (awaited in the loop)
            # a sender the policy refuses hears the policy's 5xx from Postfix
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await aiosmtplib.send(
                    mail("chen@corp.example", "eng@corp.example"),
                    sender="chen@corp.example",
                    recipients=["eng@corp.example"],
                    hostname="127.0.0.1",
                    port=instance.port,
                )
            err = refused.value.recipients[0]
            assert err.code // 100 == 5 and "only members of this group may post" in err.message
            # a moderated group: Postfix takes the post, holds it, and a click releases it
            await aiosmtplib.send(
                mail("chen@corp.example", "board@corp.example", "Quarterly numbers", "First line\n"),
                sender="chen@corp.example",
                recipients=["board@corp.example"],
                hostname="127.0.0.1",
                port=instance.port,
            )
            await until(lambda: bool(held_cards(bot)), 30)  # noqa: B023 (awaited in the loop)
            await until(lambda: len(instance.hold_queue()) == 1, 30)  # noqa: B023 (awaited in the loop)
            card = held_cards(bot)[-1]
            fields = dict(card.fields)
            assert fields["Recipients"] == "3" and fields["Subject"] == "Quarterly numbers", fields
            before = len(smtp.messages)
            assert before == 1  # only eng@'s copy so far
            from bot.events import Action, Actor, Conversation

            answer = await bot.core.handle_action(
                Action(
                    Actor("console", HR, email=HR),
                    "post.approve",
                    card.buttons[0].value,
                    Conversation("console", "hr"),
                    delivery_id="pf-1",
                )
            )
            # the copies Postfix delivers: the held message's envelope recipients (it expanded board@)
            assert answer is not None and answer.text.endswith(
                "to board@corp.example. Postfix delivers it to 3 recipients."
            ), answer
            await until(lambda: len(smtp.messages) > before, 30)  # noqa: B023 (awaited in the loop)
            released = smtp.messages[-1]
            assert sorted(released.rcpt_tos) == members
            assert released.message["Subject"] == "Quarterly numbers"
            assert instance.hold_queue() == []
            async with bot.app.ctx.sessions() as session:
                posts = list((await session.execute(select(GroupPost).order_by(GroupPost.id))).scalars())
            assert [(p.group_address, p.via, p.state) for p in posts] == [
                ("eng@corp.example", "postfix", "accepted"),
                ("board@corp.example", "postfix", "released"),
            ]
            assert posts[0].size > 0 and posts[0].queue_id and posts[1].subject == "Quarterly numbers"
        finally:
            await asyncio.to_thread(instance.stop)


async def test_postfix_rewrites_never_skip_the_policy(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Security tryout: Postfix expands eng+x@ (recipient_delimiter), "eng"@ and eng@corp.example. to eng@'s
    members; a sender eng@ refuses hears the refusal for each of them and no member gets a copy."""
    folder = shared_dir("postroom-postfix-")
    url = (
        f"sqlite+aiosqlite:///{folder / 'postroom.db'}" if database_url.startswith("sqlite") else database_url
    )
    policy_port = free_port()
    postfix = {"policy_enabled": True, "policy_port": policy_port, "config_directory": str(folder / "etc")}
    async for _bot, _relay_port in running(url, smtp.port, tmp_path, postfix=postfix):
        open_to_postfix(folder)
        instance = PostfixInstance(
            folder, sink_port=smtp.port, alias_maps=lookup_table(folder, url), policy_port=policy_port
        )
        await asyncio.to_thread(instance.start)
        try:
            for recipient in ["eng+x@corp.example", '"eng"@corp.example', "eng@corp.example."]:
                with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                    await aiosmtplib.send(
                        mail("chen@corp.example", "eng@corp.example"),
                        sender="chen@corp.example",
                        recipients=[recipient],
                        hostname="127.0.0.1",
                        port=instance.port,
                    )
                err = refused.value.recipients[0]
                assert err.code // 100 == 5 and "only members of this group may post" in err.message, (
                    recipient,
                    err,
                )
            # a member's post to eng+x@ is eng@'s: Postfix delivers it to every member (with the extension,
            # propagate_unmatched_extensions)
            await aiosmtplib.send(
                mail("alice@corp.example", "eng+x@corp.example"),
                sender="alice@corp.example",
                recipients=["eng+x@corp.example"],
                hostname="127.0.0.1",
                port=instance.port,
            )
            members = ["alice+x@corp.example", "bob+x@corp.example", "fwd+x@corp.example"]
            await until(lambda: sorted(r for m in smtp.messages for r in m.rcpt_tos) == members, 30)  # noqa: B023 (awaited in the loop)
            assert len(smtp.messages) == 1
        finally:
            await asyncio.to_thread(instance.stop)


async def test_postfix_clients_outside_the_trusted_networks_cannot_post_as_a_member(
    database_url, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Security tryout: a client that merely reaches Postfix claims sender=alice@corp.example (a member of
    eng@). With loopback left out of postfix.trusted_networks, this test's client is such a client."""
    folder = shared_dir("postroom-postfix-")
    url = (
        f"sqlite+aiosqlite:///{folder / 'postroom.db'}" if database_url.startswith("sqlite") else database_url
    )
    policy_port = free_port()
    postfix = {
        "policy_enabled": True,
        "policy_port": policy_port,
        "config_directory": str(folder / "etc"),
        "trusted_networks": ["198.51.100.0/24"],
    }
    async for _bot, _relay_port in running(url, smtp.port, tmp_path, postfix=postfix):
        open_to_postfix(folder)
        instance = PostfixInstance(
            folder, sink_port=smtp.port, alias_maps=lookup_table(folder, url), policy_port=policy_port
        )
        await asyncio.to_thread(instance.start)
        try:
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await aiosmtplib.send(
                    mail("alice@corp.example", "eng@corp.example"),
                    sender="alice@corp.example",
                    recipients=["eng@corp.example"],
                    hostname="127.0.0.1",
                    port=instance.port,
                )
            err = refused.value.recipients[0]
            assert err.code // 100 == 5 and "only members of this group may post" in err.message, err
            assert "alice@corp.example is a company address" in err.message
            # the reason whole (it was cut mid-word at 200 characters), and one reply line within RFC
            # 5321's 512 octets with its code and CRLF
            assert err.message.endswith("after SMTP AUTH as that mailbox"), err.message
            assert len(f"{err.code} {err.message}\r\n".encode()) <= 512, err.message
            # a reason too long for one reply line is cut after a whole word, with "..."
            long_sender = "a" * 300 + "@corp.example"
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await aiosmtplib.send(
                    mail(long_sender, "eng@corp.example"),
                    sender=long_sender,
                    recipients=["eng@corp.example"],
                    hostname="127.0.0.1",
                    port=instance.port,
                )
            err = refused.value.recipients[0]
            assert err.code == 554 and err.message.startswith("5.7.1 <eng@corp.example>: "), err
            assert err.message.endswith("...") and len(f"{err.code} {err.message}\r\n".encode()) <= 512, err
            said = err.message.removesuffix("...").split("rejected: <eng@corp.example>: ", 1)[1].split()
            whole = (
                f"only members of this group may post to it, and {long_sender} is a company address, but mail "
                "from this client is taken as its sender only from postfix.trusted_networks or after SMTP "
                "AUTH as that mailbox"
            ).split()
            assert 10 < len(said) < len(whole) and said == whole[: len(said)], err  # whole words only
            # ordinary mail to an address that is no group is Postfix's business, as before
            await aiosmtplib.send(
                mail("alice@corp.example", "someone@corp.example"),
                sender="alice@corp.example",
                recipients=["someone@corp.example"],
                hostname="127.0.0.1",
                port=instance.port,
            )
            await until(lambda: any("someone@corp.example" in m.rcpt_tos for m in smtp.messages), 30)
        finally:
            await asyncio.to_thread(instance.stop)
