"""The WeCom (企业微信) adapter: a self-built app in callback mode.

`GET /wecom/callback` answers WeCom's URL check; `POST /wecom/callback` takes encrypted XML, verifies
and decrypts it, answers at once (WeCom wants an answer within 5 s) and does the work in the
background: a text becomes a `Command`, a `template_card_event` click an `Action`, a `change_contact`
event a `PersonEvent`. Replies are app messages; approvals are `button_interaction` template cards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters.wecom.api import WeComApi, WeComError
from adapters.wecom.crypto import CallbackRefused, WeComCrypto
from bot import i18n
from bot.adapter import Adapter, CoreHandle, PictureFault, send_pictures
from bot.background import Background
from bot.config import WeComSettings
from bot.dedupe import Seen as _Seen
from bot.errors import UserError
from bot.events import Action, Actor, Command, Conversation, Message, MessageRef, PersonEvent, PersonKind
from bot.message_text import PLAIN, render
from bot.webhooks import Refused, parse_timestamp, read_capped

log = logging.getLogger(__name__)
PLATFORM = "wecom"
MAX_BODY = 64 * 1024
MAX_PARAM = 128
MAX_TEXT_BYTES = 2048  # a text message's content: WeCom truncates past 2048 bytes (UTF-8)
# A longer answer goes as several messages (_send_text), up to about four; only past that is it cut.
TEXT = dataclasses.replace(PLAIN, limit_bytes=4 * MAX_TEXT_BYTES)
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # media/upload takes images of at most 10 MB
KEY_SEP = "|"
CONTACT_KINDS: dict[str, PersonKind] = {
    "create_user": "joined",
    "update_user": "changed",
    "delete_user": "left",
}
BUTTON_STYLES = {"primary": 1, "default": 2, "danger": 3}


def parse_xml(data: bytes | str) -> dict[str, str]:
    """A flat dict of the root's children; CallbackRefused for anything that is not plain XML."""
    try:
        root: Element = fromstring(data, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise CallbackRefused(f"the XML is malformed ({type(exc).__name__})") from None
    if root.tag != "xml":
        raise CallbackRefused("the XML root is not <xml>")
    return {child.tag: (child.text or "").strip() for child in root}


class WeComAdapter(Adapter):
    platform = PLATFORM

    def __init__(
        self,
        settings: WeComSettings,
        *,
        base_url: str = "",
        clock: Callable[[], float] = time.time,
        api: WeComApi | None = None,
    ):
        self.settings = settings
        self.locale = settings.locale
        self.base_url = base_url
        self.crypto = WeComCrypto(settings.token, settings.encoding_aes_key, settings.corp_id)
        self.api = api or WeComApi(
            settings.api_url, settings.corp_id, settings.secret, settings.agent_id, timeout=settings.timeout_s
        )
        self.clock = clock
        self.core: CoreHandle | None = None
        self.background = Background("wecom", log)
        self._seen = _Seen()
        self._click_codes: dict[str, str] = {}  # task_id -> the newest unused ResponseCode from a click
        self._used_codes: set[str] = set()
        self._last_fallback: dict[str, str] = {}
        self.refused: list[str] = []  # reasons, newest last (for the log and tests)
        self._handlers: dict[tuple[str, str], Callable[[dict[str, str]], Coroutine[Any, Any, None]]] = {
            ("text", ""): self._on_text,
            ("event", "template_card_event"): self._on_card_click,
            ("event", "change_contact"): self._on_contact,
        }

    # -- the seam ------------------------------------------------------------------------------
    async def start(self, core: CoreHandle) -> None:
        self.core = core
        self._spawn(self.learn_userids(), "learn user ids")

    async def learn_userids(self) -> int:
        """Map the people Postroom knows to WeCom UserIDs by email (get_userid_by_email).

        Apps created since 2022 no longer read members' emails from `user/get`, so without this a
        person's first command could not be tied to their email. Returns how many were learnt.
        """
        assert self.core is not None
        emails = await self.core.directory.unmapped(PLATFORM)
        learnt = 0
        for email in emails:
            try:
                userid = await self.api.userid_by_email(email)
            except (WeComError, OSError, ValueError) as exc:
                log.warning("WeCom: looking up the UserID of %s failed (%s); stopping for now", email, exc)
                break
            if userid:
                await self.core.directory.remember(PLATFORM, userid, email)
                learnt += 1
        if learnt:
            log.info("WeCom: learnt the UserIDs of %d people by their email", learnt)
        return learnt

    async def stop(self) -> None:
        await self.background.cancel(timeout=3)
        await self.api.aclose()

    def conversation_for(self, purpose: str) -> Conversation | None:
        users = {"approvals": self.settings.approvals_users, "hr": self.settings.hr_users}.get(purpose)
        return Conversation(PLATFORM, KEY_SEP.join(users), "direct") if users else None

    async def send(self, conversation: Conversation, message: Message) -> MessageRef:
        card = message.card
        if card is not None and card.buttons:
            task_id = f"pr-{uuid.uuid4().hex}"
            data = await self.api.send(
                conversation.id, "template_card", self._card(message, task_id, buttons=True)
            )
            extra = {
                "kind": "card",
                "task_id": task_id,
                "response_code": str(data.get("response_code") or ""),
            }
            return MessageRef(
                PLATFORM, conversation.id, str(data.get("msgid") or task_id), tuple(sorted(extra.items()))
            )
        data = await self._send_text(conversation.id, self.render_text(message))
        await self._send_images(conversation.id, message)
        return MessageRef(
            PLATFORM, conversation.id, str(data.get("msgid") or uuid.uuid4().hex), (("kind", "text"),)
        )

    async def update(self, ref: MessageRef, message: Message) -> None:
        task_id = ref.get("task_id")
        if ref.get("kind") == "card" and task_id and message.card is not None:
            code = self._click_codes.pop(task_id, None)
            if code is None:
                sent_code = ref.get("response_code")
                code = sent_code if sent_code and sent_code not in self._used_codes else None
            if code:
                self._used_codes.add(code)
                try:
                    await self.api.update_template_card(
                        ref.conversation_id.split(KEY_SEP), code, self._card(message, task_id, buttons=False)
                    )
                    return
                except WeComError as exc:  # used or expired (72 h) response code: say it in a message instead
                    log.info("updating WeCom card %s failed (%s); sending a text instead", task_id, exc)
        # A message WeCom can't edit: send the new state once per change, not once per progress tick.
        text = self.render_text(message, with_buttons=False)
        key = task_id or ref.id
        if self._last_fallback.get(key) == message.text:
            return
        self._last_fallback[key] = message.text
        await self._send_text(ref.conversation_id, text)

    async def resolve(self, actor: Actor) -> tuple[str, str | None] | None:
        try:
            user = await self.api.user(actor.user_id)
        except (WeComError, OSError, ValueError) as exc:
            log.warning("looking up WeCom user %s failed: %s", actor.user_id, exc)
            return None
        email = user.get("email") or user.get("biz_mail")
        return (str(email), user.get("name")) if email else None

    def web_routes(self) -> list[Any]:
        return [
            Route("/wecom/callback", self._verify_url, methods=["GET"]),
            Route("/wecom/callback", self._callback, methods=["POST"]),
        ]

    # -- rendering -------------------------------------------------------------------------------
    def render_text(self, message: Message, with_buttons: bool = True) -> str:
        return render(message, TEXT, self.locale, buttons=with_buttons)

    def _words(self, text: str) -> str:
        """One of the adapter's own words on a card, in this messenger's language."""
        with i18n.using(self.locale):
            return i18n.t(text)

    def _card(self, message: Message, task_id: str, *, buttons: bool) -> dict[str, Any]:
        card = message.card
        assert card is not None
        rows = [{"keyname": name[:20], "value": str(value)[:120]} for name, value in card.fields]
        if card.progress is not None:
            rows.append({"keyname": self._words("Progress"), "value": f"{card.progress:.0%}"})
        link = card.link[1] if card.link else self.base_url or "https://work.weixin.qq.com"
        body: dict[str, Any] = {
            "source": {"desc": self._words("Postroom")},
            "main_title": {"title": card.title[:60], "desc": message.text[:120]},
            "horizontal_content_list": rows[-6:] if not buttons else rows[:6],
            "card_action": {"type": 1, "url": link},
            "task_id": task_id,
        }
        if buttons:
            body["card_type"] = "button_interaction"
            body["button_list"] = [
                {
                    "text": b.label[:20],
                    "style": BUTTON_STYLES.get(b.style, 2),
                    "key": f"{b.action_id}{KEY_SEP}{b.value}"[:1024],
                }
                for b in card.buttons[:6]
            ]
            body["replace_text"] = self._words("Submitted")
        else:
            body["card_type"] = "text_notice"  # the outcome: no buttons left to press
        return body

    # -- the callback ----------------------------------------------------------------------------
    def _refuse(self, exc: CallbackRefused) -> Response:
        self.refused.append(exc.reason)
        log.warning("WeCom callback refused: %s", exc.reason)
        return PlainTextResponse(f"Refused: {exc.reason}.\n", status_code=exc.status)

    def _check_params(self, request: Request, *names: str) -> list[str]:
        values = [request.query_params.get(n, "") for n in names]
        missing = [n for n, v in zip(names, values, strict=True) if not v]
        if missing:
            raise CallbackRefused(f"the query lacks {', '.join(missing)}")
        stamp = parse_timestamp(values[1])
        if stamp is None:
            raise CallbackRefused("the timestamp is not a number")
        # WeCom's signatures are 40 hex digits and nonces short; anything else is not from WeCom.
        if any(len(v) > MAX_PARAM or not v.isascii() for v in (values[0], values[2])):
            raise CallbackRefused("the signature or nonce is malformed")
        skew = self.settings.max_clock_skew_s
        if skew and abs(self.clock() - stamp) > skew:
            raise CallbackRefused("the timestamp is too far from now (a stale or replayed request)", 403)
        return values

    async def _verify_url(self, request: Request) -> Response:
        try:
            signature, timestamp, nonce, echostr = self._check_params(
                request, "msg_signature", "timestamp", "nonce", "echostr"
            )
            self.crypto.verify(signature, timestamp, nonce, echostr)
            plain = self.crypto.decrypt(echostr)
        except CallbackRefused as exc:
            return self._refuse(exc)
        return PlainTextResponse(plain)

    async def _callback(self, request: Request) -> Response:
        try:
            signature, timestamp, nonce = self._check_params(request, "msg_signature", "timestamp", "nonce")
            try:  # capped while reading, chunked or not: an oversize body is never held whole
                body = await read_capped(request, MAX_BODY)
            except Refused as exc:
                reason = (
                    "the body is too large" if exc.status == 413 else "the Content-Length is not a number"
                )
                raise CallbackRefused(reason, exc.status) from None
            encrypted = parse_xml(body).get("Encrypt")
            if not encrypted:
                raise CallbackRefused("the XML has no Encrypt element")
            self.crypto.verify(signature, timestamp, nonce, encrypted)
            inner = parse_xml(self.crypto.decrypt(encrypted))
        except CallbackRefused as exc:
            return self._refuse(exc)
        if self.core is None:  # serve starts its adapters before the web: only a stopping or odd server
            log.warning("WeCom callback before the adapter started; WeCom is asked to send it again")
            return PlainTextResponse("Postroom is starting; send again.\n", status_code=503)
        self._dispatch(inner)
        return PlainTextResponse("")  # an empty answer: no passive reply; WeCom stops retrying

    def _dispatch(self, msg: dict[str, str]) -> None:
        msg_type = msg.get("MsgType", "")
        handler = self._handlers.get((msg_type, msg.get("Event", "") if msg_type == "event" else ""))
        if handler is None:
            # WeCom retries anything not answered, so an unknown type is accepted and ignored.
            log.info("WeCom %s/%s ignored: not something Postroom handles", msg_type, msg.get("Event", ""))
            return
        key = delivery_key(msg)
        if not self._seen.first(key):
            log.info("WeCom redelivery %s ignored", key)
            return
        self._spawn(handler(msg), key)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.background.spawn(coro, name)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait for the background work of callbacks already answered (tests, shutdown)."""
        await self.background.settle(timeout)

    # -- what each kind of callback does ---------------------------------------------------------
    async def _on_text(self, msg: dict[str, str]) -> None:
        assert self.core is not None
        user = msg.get("FromUserName", "")
        command = Command(
            Actor(PLATFORM, user),
            msg.get("Content", ""),
            Conversation(PLATFORM, user, "direct"),
            delivery_id=f"msg:{msg.get('MsgId') or delivery_key(msg)}",
        )
        reply = await self.core.handle_command(command)
        if reply is not None:
            await self._send_text(user, self.render_text(reply))
            await self._send_images(user, reply)

    async def _send_text(self, touser: str, text: str) -> dict[str, Any]:
        """A text message; one over MAX_TEXT_BYTES (WeCom cuts it there) goes as several, split at line
        boundaries, in order. The first message's answer."""
        first: dict[str, Any] | None = None
        for part in split_text(text, MAX_TEXT_BYTES):
            data = await self.api.send(touser, "text", {"content": part})
            first = data if first is None else first
        return first or {}

    async def _send_images(self, touser: str, message: Message) -> None:
        """Each picture as an image message: uploaded as temporary media, sent by its media id."""

        async def deliver(filename: str, data: bytes) -> None:
            await self.api.send(touser, "image", {"media_id": await self.api.upload_image(filename, data)})

        def classify(exc: Exception) -> PictureFault | None:
            if isinstance(exc, WeComError) and exc.errcode in (413, 40006):
                return "too large"
            if isinstance(exc, WeComError) and exc.errcode >= 1000:  # WeCom's own errcode
                return "refused"
            return None

        async def tell(said: str) -> None:
            await self._send_text(touser, said)

        await send_pictures(
            message,
            platform="WeCom",
            locale=self.locale,
            max_bytes=MAX_IMAGE_BYTES,
            deliver=deliver,
            tell=tell,
            classify=classify,
        )

    async def _on_card_click(self, msg: dict[str, str]) -> None:
        assert self.core is not None
        user, task_id, key = msg.get("FromUserName", ""), msg.get("TaskId", ""), msg.get("EventKey", "")
        action_id, sep, value = key.partition(KEY_SEP)
        if not sep or not task_id:
            log.warning(
                "WeCom card click with key %r on task %r is not one of Postroom's buttons", key, task_id
            )
            return
        if msg.get("ResponseCode"):
            self._click_codes[task_id] = msg["ResponseCode"]
        action = Action(
            Actor(PLATFORM, user),
            action_id,
            value,
            Conversation(PLATFORM, user, "direct"),
            MessageRef(PLATFORM, user, task_id, (("kind", "card"), ("task_id", task_id))),
            delivery_id=f"card:{task_id}:{user}:{key}",
        )
        reply = await self.core.handle_action(action)
        if reply is not None:
            await self._send_text(user, self.render_text(reply))

    async def _on_contact(self, msg: dict[str, str]) -> None:
        assert self.core is not None
        change, user = msg.get("ChangeType", ""), msg.get("UserID", "")
        kind = CONTACT_KINDS.get(change)
        if kind is None or not user:
            log.info("WeCom change_contact %s ignored", change or "(no ChangeType)")
            return
        name = msg.get("Name") or None
        email = msg.get("Email") or msg.get("BizMail") or None
        if email is None and kind != "left":
            try:
                found = await self.api.user(user)
                email = found.get("email") or found.get("biz_mail") or None
                name = name or found.get("name")
            except (WeComError, OSError, ValueError) as exc:
                log.warning("looking up WeCom user %s failed: %s", user, exc)
        if email is None:
            kept = await self.core.directory.known(PLATFORM, user)
            email = kept[0] if kept else None
        if email and kind != "left":
            try:
                await self.core.directory.remember(PLATFORM, user, email, name)
            except UserError as exc:
                log.warning("WeCom user %s has an unusable email: %s", user, exc.sentence)
        attributes = {
            k: v
            for k, v in (("wecom_department", msg.get("Department")), ("wecom_position", msg.get("Position")))
            if v
        }
        created = msg.get("CreateTime", "")
        try:  # inside a signed callback, but an absurd number must not stop the event (admission bounds it)
            at = (
                datetime.fromtimestamp(int(created), UTC) if created.isascii() and created.isdigit() else None
            )
        except (OverflowError, OSError, ValueError):
            at = None
        at = at or datetime.now(UTC)
        # CreateTime has whole seconds: two changes in one second differ by what they say (a redelivery doesn't).
        digest = hashlib.sha256(repr(sorted(msg.items())).encode()).hexdigest()[:16]
        event = PersonEvent(
            kind,
            PLATFORM,
            f"{PLATFORM}:{user}",
            email,
            attributes,
            f"{change}:{user}:{created}:{digest}",
            at,
            name=name,
        )
        try:
            outcome = await self.core.handle_person_event(event)
            log.info("WeCom %s for %s: %s", change, user, getattr(outcome, "status", outcome))
        except UserError as exc:
            log.warning("WeCom %s for %s not applied: %s", change, user, exc.sentence)


def delivery_key(msg: dict[str, str]) -> str:
    """What makes a callback the same delivery: MsgId, else (for events) who, when and what."""
    if msg.get("MsgId"):
        return f"msg:{msg['MsgId']}"
    parts = [
        msg.get(k, "")
        for k in ("FromUserName", "CreateTime", "Event", "ChangeType", "UserID", "TaskId", "EventKey")
    ]
    return "event:" + ":".join(parts)


def split_text(text: str, limit: int) -> list[str]:
    """`text` in parts of at most `limit` UTF-8 bytes, cut at line boundaries (a line longer than that
    is cut between characters)."""
    if len(text.encode()) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line.encode()) > limit:  # one overlong line: as many characters as fit
            head = line.encode()[:limit].decode("utf-8", "ignore")
            if current:
                parts.append(current)
                current = ""
            parts.append(head)
            line = line[len(head) :]
        joined = f"{current}\n{line}" if current else line
        if len(joined.encode()) <= limit:
            current = joined
        else:
            parts.append(current)
            current = line
    if current:
        parts.append(current)
    return [p for p in parts if p.strip()]
