"""A report's chart arrives beside its text in each messenger, through the platform's own upload API:
Slack files upload v2 (files.getUploadURLExternal, the upload, files.completeUploadExternal, with the
real slack_sdk), DingTalk oapi media/upload then a robot image message, WeCom media/upload then an
image message. The console names the file. The fakes check what the platforms check (a file uploaded
before it is completed or sent, a media id that exists)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from adapters.console import ConsoleAdapter
from bot.app import App
from bot.campaigns.report import chart_data, draw
from bot.contacts.importer import import_contacts
from bot.events import Conversation, Image, Message
from tests.conftest import APPROVER, SENDER
from tests.loopback import wait_until
from tests.slack_fake import FakeSlack
from tests.slack_rig import HR_CHANNEL, U_SENDER, running
from tests.test_campaign_report import CSV, demo_like
from tests.test_dingtalk import DingWorld, ding  # noqa: F401 (the fixture)
from tests.test_wecom import WeComWorld, world  # noqa: F401 (the fixture)


def chart(tmp_path: Path) -> Path:
    path = tmp_path / "chart.png"
    draw(chart_data(demo_like()), path)
    return path


async def sent_campaign(app: App, tmp_path: Path, console: ConsoleAdapter | None = None) -> None:
    """A 4-recipient campaign, sent: the demo's first campaign."""
    path = tmp_path / "four.csv"
    path.write_text(CSV)
    await import_contacts(app.core.ctx, path, "customers")
    if console is None:
        console = ConsoleAdapter(SENDER, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(app.core)
    console.as_email = SENDER
    await console.say("/campaign new spring --to customers --template welcome")
    await console.say("/campaign submit spring")
    console.as_email = APPROVER
    reply = await console.say("/approve spring")
    assert reply is not None and "Approved" in reply.text, reply
    await app.drain()


def test_the_console_names_the_picture_file(tmp_path: Path) -> None:
    from adapters.console.adapter import render_message

    png = chart(tmp_path)
    text = render_message(Message("Report", images=(Image(str(png), "Report: “spring”"),)))
    assert f"(picture saved: {png} — Report: “spring”)" in text


async def test_slack_uploads_the_picture_with_files_upload_v2(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = await FakeSlack().start()
    try:
        from tests.slack_rig import directory

        fake.users.update(directory())
        async with running(database_url, smtp.port, tmp_path, fake) as rig:
            png = chart(tmp_path)
            await rig.adapter.send(
                Conversation("slack", HR_CHANNEL, "channel"),
                Message("Report for “spring”", images=(Image(str(png), "Report: “spring”"),)),
            )
            (shared, data) = fake.shared_files()[0]
            assert data == png.read_bytes()
            assert shared["channel_id"] == HR_CHANNEL and shared["file"]["title"] == "Report: “spring”"
            assert "thread_ts" not in shared  # in the channel under its text, not hidden in a thread
            upload_url = fake.of("files.getUploadURLExternal")[-1].params
            assert upload_url["filename"] == "chart.png" and int(upload_url["length"]) == len(data)

            # A person's /campaign report: the text in the ack, the chart uploaded to where they typed it.
            await sent_campaign(rig.app, tmp_path)
            await rig.app.drain()
            before = len(fake.shared_files())
            text = await rig.say(U_SENDER, "/campaign report spring")
            assert "sent 4, delivered 4 of 4 attempts" in text
            await fake.wait_for(lambda: len(fake.shared_files()) > before)
            shared, data = fake.shared_files()[-1]
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and shared["channel_id"] == "C0GENERAL"
            assert "spring" in shared["file"]["title"]

            # Without files:write Slack refuses the upload: the person hears where the file is instead.
            fake.fail("files.getUploadURLExternal", body={"ok": False, "error": "missing_scope"})
            text = await rig.say(U_SENDER, "/campaign report spring")
            await rig.app.drain()
            await wait_until(lambda: any("files:write" in a for a in rig.answers()))
    finally:
        await fake.stop()


async def test_dingtalk_uploads_media_then_sends_an_image_message(ding: DingWorld, tmp_path: Path) -> None:  # noqa: F811
    png = chart(tmp_path)
    await ding.adapter.send(
        Conversation("dingtalk", "cidHR", "group"),
        Message("Report for “spring”", images=(Image(str(png), "Report: “spring”"),)),
    )
    sent = ding.fake.made("/v1.0/robot/groupMessages/send")
    image = next(s for s in sent if s["msgKey"] == "sampleImageMsg")

    media_id = json.loads(image["msgParam"])["photoURL"]
    assert ding.fake.uploads[media_id]["data"] == png.read_bytes()
    assert ding.fake.uploads[media_id]["type"] == "image" and image["openConversationId"] == "cidHR"

    # A sender's /campaign report in a DingTalk chat: the markdown answer, then the chart.
    ding.fake.users["sam01"] = {"name": "Sam", "org_email": SENDER}
    await sent_campaign(ding.app, tmp_path, ding.console)
    await ding.app.drain()
    frame = await ding.fake.push(ding.message("@Postroom /campaign report spring", "msg-r1", sender="sam01"))
    await ding.acked(frame)
    await ding.adapter.settle()
    await wait_until(lambda: ding.fake.made("/webhook/msg-r1"))
    assert (
        "已发送 4" in ding.fake.made("/webhook/msg-r1")[0]["markdown"]["text"]
    )  # zh_CN, DingTalk's language
    images = [s for s in ding.fake.made("/v1.0/robot/groupMessages/send") if s["msgKey"] == "sampleImageMsg"]
    assert len(images) == 2
    latest = ding.fake.uploads[json.loads(images[-1]["msgParam"])["photoURL"]]
    assert latest["data"][:8] == b"\x89PNG\r\n\x1a\n" and latest["filename"].startswith("spring-")


async def test_wecom_uploads_media_then_sends_an_image_message(world: WeComWorld, tmp_path: Path) -> None:  # noqa: F811
    png = chart(tmp_path)
    await world.adapter.send(
        Conversation("wecom", "hannah", "direct"),
        Message("Report for “spring”", images=(Image(str(png), "Report: “spring”"),)),
    )
    (image,) = world.fake.sent("image", to="hannah")
    media = world.fake.media(image["image"]["media_id"])
    assert media is not None and media["data"] == png.read_bytes() and media["type"] == "image"
    assert media["filename"] == "chart.png"

    await sent_campaign(world.app, tmp_path, world.console)
    await world.app.drain()
    response = await world.say("sam", "/campaign report spring", "9001")
    assert response.status_code == 200
    (text,) = world.fake.sent("text", to="sam")
    assert "已发送 4" in text["text"]["content"]
    (picture,) = world.fake.sent("image", to="sam")
    got = world.fake.media(picture["image"]["media_id"])
    assert got is not None and got["data"][:8] == b"\x89PNG\r\n\x1a\n"


async def test_dingtalk_a_failed_picture_after_the_text_never_fails_the_send(
    ding: DingWorld,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Issue 15: a non-JSON 200 from media/upload, or the robot API down after the text, escaped send()
    (a retrying caller would have sent the text twice). Now send() returns; the fallback is best effort."""
    png = chart(tmp_path)
    to = Conversation("dingtalk", "cidHR", "group")
    message = Message("Report for “spring”", images=(Image(str(png), "Report: “spring”"),))
    path = "/v1.0/robot/groupMessages/send"
    ding.fake.faults["/media/upload"] = [(200, "<html>gateway</html>")]
    await ding.adapter.send(to, message)
    said = [s["msgParam"] for s in ding.fake.made(path)]
    assert len(said) == 2 and "Report for" in said[0] and "sampleImageMsg" not in str(ding.fake.made(path))
    # The robot API goes down after the text: neither the picture nor the fallback gets through.
    ding.fake.faults[path] = [None, (503, "<html>down</html>"), (503, "<html>down</html>")]
    await ding.adapter.send(to, message)
    assert len(ding.fake.made(path)) == 3  # the text once more, nothing else
    assert not ding.fake.faults[path]


async def test_wecom_a_failed_picture_after_the_text_never_fails_the_send(
    world: WeComWorld,  # noqa: F811
    tmp_path: Path,
) -> None:
    png = chart(tmp_path)
    to = Conversation("wecom", "hannah", "direct")
    message = Message("Report for “spring”", images=(Image(str(png), "Report: “spring”"),))
    world.fake.faults["/cgi-bin/media/upload"] = [(200, "<html>gateway</html>")]
    await world.adapter.send(to, message)
    assert len(world.fake.sent("text", to="hannah")) == 2 and not world.fake.sent("image")
    world.fake.faults["/cgi-bin/message/send"] = [
        None,
        (502, "<html>down</html>"),
        (502, "<html>down</html>"),
    ]
    await world.adapter.send(to, message)
    assert len(world.fake.sent("text", to="hannah")) == 3 and not world.fake.sent("image")
    assert not world.fake.faults["/cgi-bin/message/send"]


async def test_the_fallback_names_no_server_path_and_points_to_the_report_page(
    world: WeComWorld,  # noqa: F811
    ding: DingWorld,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Issue 15: "它已保存在 /tmp/…/big.png" showed the server's file path in chat."""
    from bot.events import Card

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (10 * 1024 * 1024 + 1))
    card = Card(title="Report: “spring”", link=("The report", "https://postroom.example/report/tok"))
    message = Message("Report for “spring”", card=card, images=(Image(str(big), "Report: “spring”"),))
    await world.adapter.send(Conversation("wecom", "hannah", "direct"), message)
    said = world.fake.sent("text", to="hannah")[-1]["text"]["content"]
    assert "无法在此显示图片（文件对WeCom来说太大）" in said and "https://postroom.example/report/tok" in said
    assert str(tmp_path) not in said and "big.png" not in said
    assert not world.fake.uploads  # refused before it was sent

    ding.fake.faults["/media/upload"] = [(200, "<html>gateway</html>")]
    to = Conversation("dingtalk", "cidHR", "group")
    plain = Message("Report for “spring”", images=(Image(str(chart(tmp_path)), "Report: “spring”"),))
    await ding.adapter.send(to, plain)
    said = json.loads(ding.fake.made("/v1.0/robot/groupMessages/send")[-1]["msgParam"])["text"]
    assert "无法在此显示图片（DingTalk没有给出可用的答复）。" in said and str(tmp_path) not in said


async def test_wecom_splits_a_long_text_at_line_boundaries_within_2048_bytes(
    world: WeComWorld,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Issue 15: WeCom cuts a text message past 2048 bytes; a long report lost its end (and its link)."""
    lines = [f"  链接 {n}: https://corp.example/offer/{n} — 3 people, 4 clicks" for n in range(80)]
    text = "Report for “spring” (completed): 4 recipients.\n" + "\n".join(lines) + "\nthe end"
    await world.adapter.send(Conversation("wecom", "hannah", "direct"), Message(text))
    sent = [m["text"]["content"] for m in world.fake.sent("text", to="hannah")]
    assert world.fake.truncated == 0 and len(sent) > 1
    assert all(len(part.encode()) <= 2048 for part in sent)
    assert "\n".join(sent) == world.adapter.render_text(Message(text))  # every line, whole, in order
    one_line = "长" * 1500  # 4,500 bytes on one line: cut between characters
    await world.adapter.send(Conversation("wecom", "hannah", "direct"), Message(one_line))
    assert world.fake.truncated == 0
