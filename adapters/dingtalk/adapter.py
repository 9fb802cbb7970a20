"""The DingTalk (钉钉) adapter: a Stream-mode robot, interactive approval cards, address-book events.

Every frame is acknowledged as soon as it is parsed; the work (the core's answer, directory lookups,
replies) runs in background tasks, so a slow lookup never delays an ACK. Each delivery has one
effect: message ids, event ids and card + clicker + action are the delivery ids the core records.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from dingtalk_stream import (
    AckMessage,
    CallbackHandler,
    CallbackMessage,
    ChatbotMessage,
    Credential,
    EventHandler,
    EventMessage,
)
from dingtalk_stream.card_callback import CardCallbackMessage
from dingtalk_stream.frames import Headers

from adapters.dingtalk.openapi import DingTalkApi, DingTalkError
from adapters.dingtalk.stream import PostroomStreamClient
from bot import i18n
from bot.adapter import Adapter, CoreHandle, PictureFault, send_pictures
from bot.background import Background
from bot.config import DingTalkSettings
from bot.dedupe import Seen as _Seen
from bot.errors import UserError
from bot.events import (
    Action,
    Actor,
    Card,
    Command,
    Conversation,
    Message,
    MessageRef,
    PersonEvent,
    PersonKind,
)
from bot.message_text import MARKDOWN, card_lines, render

log = logging.getLogger(__name__)
PLATFORM = "dingtalk"
CARD_TOPIC = "/v1.0/card/instances/callback"
CONTACT_KINDS: dict[str, PersonKind] = {
    "user_add_org": "joined",
    "user_modify_org": "changed",
    "user_leave_org": "left",
}
WEBHOOK_MARGIN_MS = 60_000  # don't use a session webhook in its last minute
LEADING_MENTIONS = re.compile(r"^(?:\s*@\S+)+\s*")
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # oapi media/upload takes images of at most 20 MB
MAX_BUTTONS = 2  # the documented card template has two buttons (manifests/dingtalk/card-template.md)


class _BotMessages(CallbackHandler):
    def __init__(self, adapter: DingTalkAdapter):
        super().__init__()
        self.adapter = adapter

    async def process(self, message: CallbackMessage) -> tuple[int, Any]:
        self.adapter.on_bot_message(message.data)
        return AckMessage.STATUS_OK, "OK"


class _CardClicks(CallbackHandler):
    def __init__(self, adapter: DingTalkAdapter):
        super().__init__()
        self.adapter = adapter

    async def process(self, message: CallbackMessage) -> tuple[int, Any]:
        self.adapter.on_card_click(message.data)
        return AckMessage.STATUS_OK, {}  # no card data in the ACK: the core's update() follows


class _Events(EventHandler):
    def __init__(self, adapter: DingTalkAdapter):
        super().__init__()
        self.adapter = adapter

    async def process(self, event: EventMessage) -> tuple[int, Any]:
        self.adapter.on_event(event)
        return AckMessage.STATUS_OK, "OK"

    async def raw_process(self, event_message: EventMessage) -> AckMessage:
        # The SDK echoes the event back as the ACK's data; the platform expects a status.
        code, _ = await self.process(event_message)
        ack = AckMessage()
        ack.code = code
        ack.headers.message_id = event_message.headers.message_id
        ack.headers.content_type = Headers.CONTENT_TYPE_APPLICATION_JSON
        ack.message = "OK"
        ack.data = {"status": "SUCCESS", "message": "success"}
        return ack


def conversation_from_config(value: str) -> Conversation | None:
    """`user:<staffId>` is a robot DM; anything else an openConversationId of a group."""
    if not value:
        return None
    if value.startswith("user:"):
        return Conversation(PLATFORM, value, "direct")
    return Conversation(PLATFORM, value, "group")


class DingTalkAdapter(Adapter):
    platform = PLATFORM

    def __init__(
        self,
        settings: DingTalkSettings,
        *,
        backoff_base: float = 1.0,
        api: DingTalkApi | None = None,
        clock: Any = time.time,
    ):
        self.settings = settings
        self.locale = settings.locale
        self.robot_code = settings.robot_code or settings.client_id
        self.api = api or DingTalkApi(
            settings.openapi_endpoint,
            settings.oapi_endpoint,
            settings.client_id,
            settings.client_secret,
            timeout=settings.timeout_s,
        )
        self.client = PostroomStreamClient(
            Credential(settings.client_id, settings.client_secret), self.api, backoff_base=backoff_base
        )
        self.client.register_callback_handler(ChatbotMessage.TOPIC, _BotMessages(self))
        self.client.register_callback_handler(CARD_TOPIC, _CardClicks(self))
        self.client.register_all_event_handler(_Events(self))
        self.clock = clock
        self.core: CoreHandle | None = None
        self._run: asyncio.Task[None] | None = None
        self.background = Background("dingtalk", log)
        self._seen = _Seen()
        self._last_text: dict[str, str] = {}
        self._event_kinds = {kind: self._on_contact for kind in CONTACT_KINDS}

    # -- the seam ------------------------------------------------------------------------------
    async def start(self, core: CoreHandle) -> None:
        self.core = core
        self._run = asyncio.get_running_loop().create_task(self.client.start(), name="dingtalk stream")

    async def stop(self) -> None:
        """Close the stream and cancel its work; returns within a few seconds whatever the network does."""
        try:
            await asyncio.wait_for(self.client.stop(), 2)
        except (TimeoutError, OSError):
            pass
        pending = [task for task in (self._run, *self.background, *self.client._frames) if task is not None]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
        await self.api.aclose()

    def conversation_for(self, purpose: str) -> Conversation | None:
        value = {"approvals": self.settings.approvals_conversation, "hr": self.settings.hr_conversation}.get(
            purpose
        )
        return conversation_from_config(value or "")

    async def send(self, conversation: Conversation, message: Message) -> MessageRef:
        card = message.card
        if card is not None and card.buttons and self.settings.card_template_id:
            out_track_id = f"postroom-{uuid.uuid4().hex}"
            body: dict[str, Any] = {
                "cardTemplateId": self.settings.card_template_id,
                "outTrackId": out_track_id,
                "callbackType": "STREAM",  # only STREAM cards call back over the stream
                "cardData": {"cardParamMap": self.card_params(message)},
                "userIdType": 1,
            }
            if conversation.id.startswith("user:"):
                body["openSpaceId"] = f"dtv1.card//IM_ROBOT.{conversation.id[5:]}"
                body["imRobotOpenSpaceModel"] = {"supportForward": False}
                body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT", "robotCode": self.robot_code}
            else:
                body["openSpaceId"] = f"dtv1.card//IM_GROUP.{conversation.id}"
                body["imGroupOpenSpaceModel"] = {"supportForward": False}
                body["imGroupOpenDeliverModel"] = {"robotCode": self.robot_code}
            await self.api.create_and_deliver_card(body)
            return MessageRef(PLATFORM, conversation.id, out_track_id, (("kind", "card"),))
        await self._post_markdown(conversation.id, message)
        await self._post_images(conversation.id, message)
        return MessageRef(PLATFORM, conversation.id, uuid.uuid4().hex, (("kind", "text"),))

    async def update(self, ref: MessageRef, message: Message) -> None:
        if ref.get("kind") == "card" and message.card is not None:
            await self.api.update_card(ref.id, self.card_params(message, decided=True))
            return
        # Robot messages can't be edited: send the new state once per change, not once per progress tick.
        if self._last_text.get(ref.id) == message.text:
            return
        self._last_text[ref.id] = message.text
        await self._post_markdown(ref.conversation_id, message)

    async def resolve(self, actor: Actor) -> tuple[str, str | None] | None:
        try:
            user = await self.api.user(actor.user_id)
        except (DingTalkError, OSError, ValueError) as exc:
            log.warning("looking up DingTalk user %s failed: %s", actor.user_id, exc)
            return None
        email = user.get("org_email") or user.get("email")
        return (str(email), user.get("name")) if email else None

    # -- rendering -------------------------------------------------------------------------------
    def markdown(self, message: Message, with_buttons: bool = True) -> str:
        return render(message, MARKDOWN, self.locale, buttons=with_buttons)

    def card_params(self, message: Message, *, decided: bool = False) -> dict[str, str]:
        """The string variables of the approval card template (manifests/dingtalk/card-template.md)."""
        card = message.card
        assert card is not None
        # The core writes field names in this adapter's language (see core.post): "Outcome" or its translation.
        with i18n.using(self.locale):
            outcome_names = {"Outcome", i18n.t("Outcome")}
        fields = [(n, v) for n, v in card.fields if n not in outcome_names]
        outcome = next((v for n, v in card.fields if n in outcome_names), "")
        body = Card(title=card.title, fields=tuple(fields), progress=card.progress, footer=card.footer)
        with i18n.using(self.locale):
            content = "\n".join(card_lines(body, MARKDOWN, buttons=False, title=False))
        params = {
            "title": card.title,
            "summary": message.text,
            "content": content,
            "status": outcome,
            "preview_label": card.link[0] if card.link else "",
            "preview_url": card.link[1] if card.link else "",
            "has_buttons": "false" if decided or not card.buttons else "true",
        }
        for i, button in enumerate(card.buttons[:MAX_BUTTONS], start=1):
            params.update(
                {
                    f"btn{i}_label": button.label,
                    f"btn{i}_action": button.action_id,
                    f"btn{i}_value": button.value,
                    f"btn{i}_style": button.style,
                }
            )
        return params

    async def _post_images(self, conversation_id: str, message: Message) -> None:
        """Each picture as a robot image message: uploaded with media/upload, sent by its media id."""

        async def deliver(filename: str, data: bytes) -> None:
            param = {"photoURL": await self.api.upload_image(filename, data)}
            if conversation_id.startswith("user:"):
                await self.api.send_to_users(self.robot_code, [conversation_id[5:]], "sampleImageMsg", param)
            else:
                await self.api.send_to_group(self.robot_code, conversation_id, "sampleImageMsg", param)

        def classify(exc: Exception) -> PictureFault | None:
            if isinstance(exc, DingTalkError) and exc.status in (413, 40006):
                return "too large"
            if isinstance(exc, DingTalkError) and exc.status != 0 and not 500 <= exc.status < 600:
                return "refused"
            return None

        async def tell(said: str) -> None:
            await self._post_markdown(conversation_id, Message(said))

        await send_pictures(
            message,
            platform="DingTalk",
            locale=self.locale,
            max_bytes=MAX_IMAGE_BYTES,
            deliver=deliver,
            tell=tell,
            classify=classify,
        )

    async def _post_markdown(self, conversation_id: str, message: Message) -> None:
        title = (message.card.title if message.card else message.text.split("\n", 1)[0])[:60] or "Postroom"
        param = {"title": title, "text": self.markdown(message)}
        if conversation_id.startswith("user:"):
            await self.api.send_to_users(self.robot_code, [conversation_id[5:]], "sampleMarkdown", param)
        else:
            await self.api.send_to_group(self.robot_code, conversation_id, "sampleMarkdown", param)

    # -- inbound: called by the stream handlers, return at once ----------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.background.spawn(coro, name)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait for the background work of frames already acknowledged (tests)."""
        await self.background.settle(timeout)

    def on_bot_message(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise TypeError("the robot message is not a JSON object")
        msg = ChatbotMessage.from_dict(data)  # a text message without `text` raises: a 400 ACK
        if not self._our_corp(msg.sender_corp_id or msg.chatbot_corp_id or self.settings.corp_id):
            # People from other organisations share groups with the robot: not an error, not ours.
            log.info("DingTalk message from another organisation (%s) ignored", msg.sender_corp_id)
            return
        if msg.message_type != "text" or msg.text is None or not msg.text.content:
            log.info("DingTalk %s message ignored: Postroom reads text commands", msg.message_type)
            return
        if not msg.sender_staff_id:
            log.info("DingTalk message from someone outside the company (no staff id) ignored")
            return
        if self.core is None or not self._seen.first(f"msg:{msg.message_id}"):
            log.info("DingTalk message %s ignored: a redelivery", msg.message_id)
            return
        self._spawn(self._command(msg), f"message {msg.message_id}")

    async def _command(self, msg: ChatbotMessage) -> None:
        assert self.core is not None
        text = msg.text.content
        group = msg.conversation_type == "2"
        if group:
            text = LEADING_MENTIONS.sub("", text)
        conversation = (
            Conversation(PLATFORM, msg.conversation_id, "group")
            if group
            else Conversation(PLATFORM, f"user:{msg.sender_staff_id}", "direct")
        )
        # An admin finds the openConversationId for dingtalk.approvals_conversation here (postroom -v serve).
        log.info(
            "DingTalk command from staff id %s in conversation %s (%s)",
            msg.sender_staff_id,
            msg.conversation_id,
            msg.conversation_title or "direct",
        )
        command = Command(
            Actor(PLATFORM, msg.sender_staff_id, name=msg.sender_nick),
            text.strip(),
            conversation,
            delivery_id=msg.message_id,
        )
        reply = await self.core.handle_command(command)
        if reply is None:
            return
        expires = int(msg.session_webhook_expired_time or 0)
        answered = False
        if msg.session_webhook and expires > self.clock() * 1000 + WEBHOOK_MARGIN_MS:
            try:
                title = reply.text.split("\n", 1)[0][:60] or "Postroom"
                await self.api.session_webhook(
                    msg.session_webhook,
                    {"msgtype": "markdown", "markdown": {"title": title, "text": self.markdown(reply)}},
                )
                answered = True
            except (DingTalkError, OSError) as exc:
                log.info("DingTalk session webhook failed (%s); replying through the robot API", exc)
        if not answered:
            await self._post_markdown(conversation.id, reply)
        # A session webhook takes no uploaded picture: pictures go through the robot API.
        await self._post_images(conversation.id, reply)

    def on_card_click(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise TypeError("the card callback is not a JSON object")
        click = CardCallbackMessage.from_dict(data)  # content that is not JSON raises: a 400 ACK
        if not self._our_corp(click.corp_id):
            log.warning("DingTalk card click from another organisation (%s) ignored", click.corp_id)
            return
        content = click.content if isinstance(click.content, dict) else {}
        params = (content.get("cardPrivateData") or {}).get("params") or {}
        action_id, value = str(params.get("action_id") or ""), str(params.get("value") or "")
        if not action_id or not click.user_id or not click.card_instance_id:
            log.warning("DingTalk card callback without action_id, user or card ignored: %s", content)
            return
        key = f"card:{click.card_instance_id}:{click.user_id}:{action_id}"
        if self.core is None or not self._seen.first(key):
            log.info("DingTalk card click %s ignored: a redelivery", key)
            return
        action = Action(
            Actor(PLATFORM, click.user_id),
            action_id,
            value,
            Conversation(PLATFORM, f"user:{click.user_id}", "direct"),
            MessageRef(PLATFORM, click.space_id or "", click.card_instance_id, (("kind", "card"),)),
            delivery_id=key,
        )
        self._spawn(self._action(action), key)

    async def _action(self, action: Action) -> None:
        assert self.core is not None
        reply = await self.core.handle_action(action)
        if reply is not None:
            await self._post_markdown(action.conversation.id, reply)

    def _our_corp(self, corp_id: str | None) -> bool:
        # corp_id is required (adapters/dingtalk/__init__.py); unset, nothing is ours rather than everything.
        return bool(self.settings.corp_id) and corp_id == self.settings.corp_id

    def on_event(self, event: EventMessage) -> None:
        if not self._our_corp(event.headers.event_corp_id):
            log.warning("DingTalk event from another organisation (%s) ignored", event.headers.event_corp_id)
            return
        kind = event.headers.event_type or ""
        handler = self._event_kinds.get(kind)
        if handler is None:
            log.info("DingTalk event %s ignored: not something Postroom handles", kind or "(no type)")
            return
        if not isinstance(event.data, dict):
            raise TypeError("the event data is not a JSON object")
        users = event.data.get("userId") or []
        if isinstance(users, str):
            users = [users]
        event_id = event.headers.event_id or event.headers.message_id
        if self.core is None or not event_id or not self._seen.first(f"event:{event_id}"):
            log.info("DingTalk event %s ignored: a redelivery", event_id)
            return
        born = event.headers.event_born_time
        try:
            at = datetime.fromtimestamp(born / 1000, UTC) if born else datetime.now(UTC)
        except (OverflowError, OSError, ValueError, TypeError):
            at = datetime.now(UTC)  # an absurd birth time: admission would refuse it anyway
        diff = {
            d.get("userid"): d.get("curr") or {}
            for d in event.data.get("diffInfo") or []
            if isinstance(d, dict)
        }
        for user in users:
            self._spawn(
                handler(kind, str(user), f"{event_id}:{user}", at, diff.get(user, {})), f"{kind} {user}"
            )

    async def _on_contact(
        self, kind: str, user: str, event_id: str, at: datetime, curr: dict[str, Any]
    ) -> None:
        assert self.core is not None
        change = CONTACT_KINDS[kind]
        email: str | None = None
        name: str | None = curr.get("name") or None
        attributes: dict[str, Any] = {}
        if change != "left":  # leavers can't be looked up any more: the kept mapping answers for them
            try:
                found = await self.api.user(user)
                email = found.get("org_email") or found.get("email") or None
                name = found.get("name") or name
                if found.get("dept_id_list"):
                    attributes["dingtalk_dept_ids"] = ",".join(str(d) for d in found["dept_id_list"])
                if found.get("title"):
                    attributes["dingtalk_title"] = found["title"]
            except (DingTalkError, OSError, ValueError) as exc:
                log.warning("looking up DingTalk user %s failed: %s", user, exc)
            email = email or curr.get("email") or None
        if email is None:
            kept = await self.core.directory.known(PLATFORM, user)
            email = kept[0] if kept else None
        elif change != "left":
            try:
                await self.core.directory.remember(PLATFORM, user, email, name)
            except UserError as exc:
                log.warning("DingTalk user %s has an unusable email: %s", user, exc.sentence)
        event = PersonEvent(
            change,
            PLATFORM,
            f"{PLATFORM}:{user}",
            email,
            attributes,
            event_id,
            at,
            name=name,
        )
        try:
            outcome = await self.core.handle_person_event(event)
            log.info("DingTalk %s for %s: %s", kind, user, getattr(outcome, "status", outcome))
        except UserError as exc:
            log.warning("DingTalk %s for %s not applied: %s", kind, user, exc.sentence)
