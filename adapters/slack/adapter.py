"""The Slack adapter: slack-bolt's AsyncApp in HTTP mode (POST /slack/events) or Socket Mode.

It only translates. A slash command becomes a `Command` (mentions and link markup resolved to
email addresses first), a button click an `Action`, a directory event a `PersonEvent`; the core
decides. Slack gives 3 seconds: every request is acknowledged at once, carrying the answer when
the core has it within `slack.answer_within_s`, else "Working on it…" with the answer following
through the response URL (then chat.postEphemeral, then a DM — a failure to post is never silent).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.slack import blocks
from adapters.slack.directory import email_of, fingerprint, name_of, person_event
from adapters.slack.markup import resolve_markup
from bot.adapter import Adapter, CoreHandle
from bot.background import Background
from bot.config import SlackSettings
from bot.errors import UserError, error_message
from bot.events import Action, Actor, Command, Conversation, Image, Message, MessageRef
from bot.message_text import picture_fallback
from bot.webhooks import Refused, parse_timestamp, read_capped, replay

log = logging.getLogger(__name__)

PLATFORM = "slack"
EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000
USER_CACHE_S = 3600.0
WORKING = "Working on it…"
UMBRELLA = "/postroom"

# Problems met while the core handles one request (a card that could not be posted), told to
# the person in the answer to that request.
_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("slack_notes", default=None)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        return str(data.get("error") or f"HTTP {exc.response.status_code}")
    return type(exc).__name__


class SlackAdapter(Adapter):
    platform = PLATFORM

    def __init__(self, cfg: SlackSettings):
        if cfg.bot_token is None:
            raise ValueError("slack.bot_token is required")
        self.cfg = cfg
        self.client = AsyncWebClient(
            token=cfg.bot_token.get_secret_value(),
            base_url=cfg.api_url,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            ],
        )
        http = cfg.mode == "http"
        secret = cfg.signing_secret.get_secret_value() if cfg.signing_secret else ""
        self.verifier = SignatureVerifier(secret) if http else None
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret or None,
            request_verification_enabled=http,
            process_before_response=False,
            logger=logging.getLogger("adapters.slack.bolt"),
        )
        self._register(self.app)
        self.http_handler: Any = None
        if http:
            from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler

            self.http_handler = AsyncSlackRequestHandler(self.app)
        self.socket: Any = None
        self.core: CoreHandle | None = None
        self.bot_user_id: str | None = None
        self._users: dict[str, tuple[str | None, str | None, float]] = {}
        self._seen: dict[str, tuple[Any, ...]] = {}
        self.background = Background("slack", log)
        # chat.update throttle, per message: when it last went out, what waits, the timer
        self._last_update: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], tuple[MessageRef, Message]] = {}
        self._timers: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- the seam ------------------------------------------------------------------------------
    async def start(self, core: CoreHandle) -> None:
        self.core = core
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise UserError(
                f"Slack refused the bot token ({_error_code(exc)}); check slack.bot_token."
            ) from None
        except Exception as exc:
            raise UserError(
                f"Postroom can't reach Slack at {self.cfg.api_url} ({type(exc).__name__}); "
                "check the network and slack.api_url."
            ) from None
        self.bot_user_id = auth.get("user_id")
        if self.cfg.mode == "socket":
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            assert self.cfg.app_token is not None
            self.socket = AsyncSocketModeHandler(
                self.app,
                self.cfg.app_token.get_secret_value(),
                logger=logging.getLogger("adapters.slack.socket"),
            )
            await self.socket.connect_async()

    async def stop(self) -> None:
        for timer in list(self._timers.values()):
            timer.cancel()
        for key, (ref, message) in list(self._pending.items()):  # the last word is never lost
            self._pending.pop(key, None)
            try:
                await asyncio.wait_for(self._chat_update(ref, message), 3)
            except Exception:
                log.warning("a last message update could not be sent on stop")
        self._timers.clear()
        if self.socket is not None:
            await self.socket.close_async()
            self.socket = None
        await self.background.cancel(timeout=3)

    async def send(self, conversation: Conversation, message: Message) -> MessageRef:
        payload = blocks.message_payload(message)
        try:
            resp = await self.client.chat_postMessage(channel=conversation.id, unfurl_links=False, **payload)
        except Exception as exc:
            code = _error_code(exc)
            hint = (
                " Invite the bot to that channel (/invite @Postroom)."
                if code in ("not_in_channel", "channel_not_found")
                else ""
            )
            self._note(f"I couldn't post to <#{conversation.id}> (Slack said: {code}).{hint}")
            raise
        channel, ts = str(resp.get("channel") or conversation.id), str(resp["ts"])
        for image in message.images:  # in the channel, right under the message (a thread would hide it)
            await self._upload(channel, image, message)
        return MessageRef(PLATFORM, channel, ts, (("channel", channel), ("ts", ts)))

    async def _upload(self, channel: str, image: Image, message: Message) -> bool:
        """A picture beside a message: files upload v2 (files.getUploadURLExternal, the upload,
        files.completeUploadExternal), shared in `channel`. Needs the files:write scope."""
        try:
            await self.client.files_upload_v2(
                channel=channel,
                file=image.path,
                filename=image.path.rsplit("/", 1)[-1],
                title=image.title,
                alt_txt=image.title,
            )
            return True
        except Exception as exc:
            code = _error_code(exc)
            hint = " Add the files:write scope and reinstall the app." if code == "missing_scope" else ""
            log.warning("uploading %s to Slack failed: %s", image.path, code)
            self._note(picture_fallback(message, f"Slack said: {code}") + hint)
            return False

    async def update(self, ref: MessageRef, message: Message) -> None:
        """Replace a message; at most one chat.update per message every `update_interval_s`.

        Updates in between are folded: the latest goes out when the interval has passed.
        """
        key = (ref.get("channel") or ref.conversation_id, ref.get("ts") or ref.id)
        if key in self._timers:
            self._pending[key] = (ref, message)
            return
        wait = self._last_update.get(key, float("-inf")) + self.cfg.update_interval_s - time.monotonic()
        if wait <= 0:
            self._last_update[key] = time.monotonic()
            await self._chat_update(ref, message)
            return
        self._pending[key] = (ref, message)
        self._timers[key] = asyncio.get_running_loop().create_task(self._flush_later(key, wait))

    async def _flush_later(self, key: tuple[str, str], wait: float) -> None:
        try:
            await asyncio.sleep(wait)
        finally:
            self._timers.pop(key, None)
        item = self._pending.pop(key, None)
        if item is None:
            return
        self._last_update[key] = time.monotonic()
        try:
            await self._chat_update(*item)
        except Exception:
            log.exception("updating a Slack message failed")

    async def _chat_update(self, ref: MessageRef, message: Message) -> None:
        payload = blocks.message_payload(message)
        payload.setdefault("blocks", [])
        await self.client.chat_update(
            channel=ref.get("channel") or ref.conversation_id, ts=ref.get("ts") or ref.id, **payload
        )

    async def resolve(self, actor: Actor) -> tuple[str, str | None] | None:
        email, name = await self._lookup(actor.user_id)
        return (email, name) if email else None

    def web_routes(self) -> list[Any]:
        return [Route(EVENTS_PATH, self._http_endpoint, methods=["POST"])] if self.http_handler else []

    def conversation_for(self, purpose: str) -> Conversation | None:
        channel = {"approvals": self.cfg.approvals_channel, "hr": self.cfg.hr_channel}.get(purpose)
        return Conversation(PLATFORM, channel, "channel") if channel else None

    # -- directory -----------------------------------------------------------------------------
    async def _lookup(self, user_id: str) -> tuple[str | None, str | None]:
        cached = self._users.get(user_id)
        if cached and cached[2] > time.monotonic():
            return cached[0], cached[1]
        try:
            resp = await self.client.users_info(user=user_id)
        except SlackApiError as exc:
            if _error_code(exc) in ("user_not_found", "user_not_visible"):
                return None, None
            raise
        user = resp.get("user") or {}
        self._remember(user)
        email = email_of(user)
        if email:  # the directory knows them: a mention of them is a colleague, not a typo
            try:
                await self._core().directory.remember(PLATFORM, user_id, email, name_of(user))
            except UserError as exc:
                log.warning("Slack user %s has an unusable email: %s", user_id, exc.sentence)
        return email, name_of(user)

    def _remember(self, user: dict[str, Any]) -> None:
        if user.get("id"):
            self._users[user["id"]] = (email_of(user), name_of(user), time.monotonic() + USER_CACHE_S)

    async def _email_for(self, user_id: str) -> str | None:
        return (await self._lookup(user_id))[0]

    # -- bolt listeners --------------------------------------------------------------------------
    def _register(self, app: AsyncApp) -> None:
        app.command(re.compile(r".+"))(self._on_command)
        app.action(re.compile(r".+"))(self._on_action)
        app.view(blocks.REASON_CALLBACK)(self._on_reason)
        app.event("team_join")(self._on_directory)
        app.event("user_change")(self._on_directory)

    def _core(self) -> CoreHandle:
        if self.core is None:
            raise RuntimeError("the Slack adapter was not started")
        return self.core

    @staticmethod
    def _note(text: str) -> None:
        notes = _notes.get()
        if notes is not None:
            notes.append(text)

    async def _on_command(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        core = self._core()
        user_id, channel = str(body.get("user_id") or ""), str(body.get("channel_id") or "")
        actor = Actor(PLATFORM, user_id, name=body.get("user_name"))
        conversation = Conversation(PLATFORM, channel, "direct" if channel.startswith("D") else "channel")
        notes: list[str] = []
        _notes.set(notes)

        async def run() -> Message | None:
            try:
                text = await resolve_markup(str(body.get("text") or ""), self._email_for)
            except UserError as exc:
                return error_message(exc)
            except Exception as exc:
                log.warning("resolving mentions failed: %s", _error_code(exc))
                return Message(
                    f"I couldn't look up the people you mentioned in Slack ({_error_code(exc)}); "
                    "nothing was changed. Try again, or type email addresses."
                )
            command = str(body.get("command") or "")
            # /postroom <command> … reaches every command, for workspaces where a name is taken
            line = (text.strip() or "help") if command == UMBRELLA else f"{command} {text}".strip()
            try:
                return await core.handle_command(
                    Command(actor, line, conversation, delivery_id=body.get("trigger_id"))
                )
            except Exception:
                log.exception("a Slack command could not be handled")
                return Message("Something went wrong on my side; nothing was changed. Try again in a minute.")

        task = self._spawn(run())
        done, _ = await asyncio.wait({task}, timeout=self.cfg.answer_within_s)
        if task in done:
            reply = task.result()
            if reply is None:  # a redelivery already answered
                await ack()
            else:
                await ack(response_type="ephemeral", **self._with_notes(reply, notes))
                if reply.images:
                    self._spawn(self._pictures(user_id, channel, reply, respond))
            return
        await ack(text=WORKING, response_type="ephemeral")
        reply = await task
        if reply is not None:
            await self._tell(user_id, channel, self._with_notes(reply, notes), respond)
            if reply.images:
                await self._pictures(user_id, channel, reply, respond)

    async def _pictures(self, user_id: str, channel: str, reply: Message, respond: Any) -> None:
        """A command answer's pictures, uploaded where the command was typed (a file can't be ephemeral);
        if that fails, the person is told why, and where the report page is."""
        notes: list[str] = []
        _notes.set(notes)
        for image in reply.images:
            await self._upload(channel or user_id, image, reply)
        if notes:
            await self._tell(user_id, channel, {"text": "\n".join(notes)}, respond)

    async def _on_action(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        core = self._core()
        user_id = str((body.get("user") or {}).get("id") or "")
        container = body.get("container") or {}
        channel = str((body.get("channel") or {}).get("id") or container.get("channel_id") or "")
        ts = str(container.get("message_ts") or (body.get("message") or {}).get("ts") or "")
        action_id, value = str(action.get("action_id") or ""), str(action.get("value") or "")
        if action_id.endswith(".reject") and ":" not in value:
            # A rejection needs a reason: ask in a modal, then the submission becomes the Action.
            title = "Reject campaign" if action_id.startswith("campaign.") else "Reject"
            try:
                await self.client.views_open(
                    trigger_id=body.get("trigger_id"),
                    view=blocks.reason_modal(
                        title=title, action_id=action_id, value=value, channel=channel, ts=ts
                    ),
                )
            except Exception as exc:
                await self._tell(
                    user_id,
                    channel,
                    {
                        "text": (
                            f"I couldn't open the form for your reason (Slack said: {_error_code(exc)}). "
                            "Type /reject <campaign> <reason> instead."
                        )
                    },
                    respond,
                )
            return
        notes: list[str] = []
        _notes.set(notes)
        reply = await core.handle_action(
            Action(
                Actor(PLATFORM, user_id, name=(body.get("user") or {}).get("name")),
                action_id,
                value,
                Conversation(PLATFORM, channel, "channel"),
                MessageRef(PLATFORM, channel, ts, (("channel", channel), ("ts", ts))) if ts else None,
                delivery_id=body.get("trigger_id") or action.get("action_ts"),
            )
        )
        if reply is not None:
            await self._tell(user_id, channel, self._with_notes(reply, notes), respond)

    async def _on_reason(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        parsed = blocks.read_reason_submission(view)
        if parsed is None:
            await ack()
            log.warning("a reason form came back without its context; ignored")
            return
        meta, reason = parsed
        if not reason:
            await ack(response_action="errors", errors={blocks.REASON_BLOCK: "Say why, in a few words."})
            return
        await ack()
        user_id = str((body.get("user") or {}).get("id") or "")
        channel, ts = meta["c"], meta["t"]
        notes: list[str] = []
        _notes.set(notes)
        reply = await self._core().handle_action(
            Action(
                Actor(PLATFORM, user_id, name=(body.get("user") or {}).get("name")),
                meta["a"],
                f"{meta['v']}:{reason}",
                Conversation(PLATFORM, channel, "channel"),
                MessageRef(PLATFORM, channel, ts, (("channel", channel), ("ts", ts))) if ts else None,
                delivery_id=f"view:{view.get('id')}",
            )
        )
        if reply is not None:
            await self._tell(user_id, channel, self._with_notes(reply, notes), None)

    async def _on_directory(self, body: dict[str, Any]) -> None:
        event = body.get("event") or {}
        user: dict[str, Any] = event["user"] if isinstance(event.get("user"), dict) else {}
        self._remember(user)
        email = email_of(user)
        if user.get("id") and email:  # roles follow the new address from the next command on
            await self._core().directory.remember(PLATFORM, user["id"], email, name_of(user))
        person = person_event(body)
        if person is None:
            return
        previous = self._seen.get(person.external_id)
        if event.get("type") == "user_change":
            mark = fingerprint(user)
            if previous == mark:
                return  # a status or avatar change: nothing Postroom keeps
            # Claimed before handling: the same profile arriving while this one is applied is skipped too.
            self._seen[person.external_id] = mark
        try:
            outcome = await self._core().handle_person_event(person)
        except BaseException as exc:
            if event.get("type") == "user_change":  # not applied: a redelivery must not be skipped
                if previous is None:
                    self._seen.pop(person.external_id, None)
                else:
                    self._seen[person.external_id] = previous
            if not isinstance(exc, UserError):
                raise
            log.warning(
                "Slack %s event for %s not applied: %s", person.kind, person.external_id, exc.sentence
            )
            return
        log.info(
            "Slack %s event for %s: %s", person.kind, person.external_id, getattr(outcome, "status", outcome)
        )

    # -- answering -------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self.background.spawn(coro)

    @staticmethod
    def _with_notes(reply: Message, notes: list[str]) -> dict[str, Any]:
        payload = blocks.message_payload(reply)
        if notes:
            extra = "\n".join(notes)  # our own sentences, with Slack channel links in them
            payload["text"] = f"{payload['text']}\n{extra}" if payload["text"] else extra
            if "blocks" in payload:
                payload["blocks"].append(
                    {"type": "section", "text": {"type": "mrkdwn", "text": extra[:3000]}}
                )
        return payload

    async def _tell(self, user_id: str, channel: str, payload: dict[str, Any], respond: Any) -> None:
        """An answer only the actor sees: response URL, else chat.postEphemeral, else a DM."""
        if respond is not None and getattr(respond, "response_url", None):
            try:
                resp = await respond(response_type="ephemeral", replace_original=False, **payload)
                if resp.status_code == 200:
                    return
                log.warning("response_url refused the answer (HTTP %s)", resp.status_code)
            except Exception as exc:
                log.warning("response_url failed: %s", type(exc).__name__)
        if channel:
            try:
                await self.client.chat_postEphemeral(channel=channel, user=user_id, **payload)
                return
            except Exception as exc:
                log.warning("chat.postEphemeral failed: %s", _error_code(exc))
        try:
            await self.client.chat_postMessage(channel=user_id, **payload)
        except Exception as exc:
            log.error("could not tell Slack user %s anything (%s)", user_id, _error_code(exc))

    # -- HTTP mode ------------------------------------------------------------------------------
    async def _http_endpoint(self, request: Request) -> Response:
        """Signature and shape first (401 / 400, nothing runs), then bolt, which verifies again."""
        try:  # capped while reading, chunked or not: an oversize body is never held whole
            body = await read_capped(request, MAX_BODY_BYTES)
        except Refused as exc:
            return JSONResponse({"error": exc.sentence}, status_code=exc.status)
        assert self.verifier is not None
        timestamp = request.headers.get("x-slack-request-timestamp")
        signature = request.headers.get("x-slack-signature")
        if not timestamp or not signature:
            return JSONResponse({"error": "invalid request signature"}, status_code=401)
        # What the SDK's verifier would choke on (int("abc"), non-ASCII in compare_digest) is refused here.
        if parse_timestamp(timestamp) is None:
            return JSONResponse({"error": "malformed X-Slack-Request-Timestamp"}, status_code=400)
        if not signature.isascii():
            return JSONResponse({"error": "invalid request signature"}, status_code=401)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"error": "malformed payload"}, status_code=400)
        if not self.verifier.is_valid(body, timestamp, signature):
            return JSONResponse({"error": "invalid request signature"}, status_code=401)
        if not well_formed(body, request.headers.get("content-type", "")):
            return JSONResponse({"error": "malformed payload"}, status_code=400)
        return await self.http_handler.handle(replay(request, body))


def well_formed(body: bytes, content_type: str) -> bool:
    """A request bolt can route: an Events API envelope, a slash command, or an interactivity payload."""
    try:
        text = body.decode("utf-8")
        if content_type.startswith("application/json"):
            data = json.loads(text)
            return isinstance(data, dict) and isinstance(data.get("type"), str)
        form = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested thousands deep: RecursionError
        return False
    if "payload" in form:
        try:
            data = json.loads(form["payload"][0])
        except (ValueError, RecursionError):
            return False
        return (
            isinstance(data, dict)
            and isinstance(data.get("type"), str)
            and isinstance(data.get("user"), dict)
        )
    if "ssl_check" in form:
        return True
    return all(form.get(k, [""])[0] for k in ("command", "user_id", "team_id"))
