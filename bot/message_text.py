"""A `Message` and its `Card` as text, in a messenger's markup: the one renderer for the console,
DingTalk (markdown) and WeCom (plain text). Each messenger passes its `TextStyle`.

The card's title, field names and button labels arrive already in the reader's language (the core
builds each message in the language of the messenger or person it goes to); this renderer adds only
its own few words ("Progress", "or type"), through the same translation layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import i18n
from bot.events import Card, Message
from bot.i18n import t


@dataclass(frozen=True)
class TextStyle:
    title: str  # "{title}"
    field: str  # "{name}", "{value}"
    continued: str | None  # a multi-line field value's further lines ("{line}"); None: as they are
    progress: str  # "{label}", "{percent}", "{bar}" (a 20-cell bar)
    link: str  # "{label}", "{url}"
    button: str  # "{label}", "{or_type}", "{command}" (only buttons with a typed twin are shown)
    footer: str  # "{footer}"
    closing: str | None = None  # a last line under the card
    between: str = "\n"  # between the message's text and its card
    attachment: str | None = (
        None  # "{path}": how an attached file is mentioned, if the messenger can't send it
    )
    image: str | None = (
        None  # "{path}", "{title}": how a picture is named, if the messenger doesn't upload it
    )
    limit_chars: int | None = None  # cut (with "…") to fit the messenger's message size, in characters…
    limit_bytes: int | None = None  # …or in bytes of UTF-8


CONSOLE = TextStyle(
    title="┌─ {title}",
    field="│ {name}: {value}",
    continued="│   {line}",
    progress="│ [{bar}] {percent}",
    link="│ {label}: {url}",
    button="│ [ {label} ]  → type: {command}",
    footer="│ {footer}",
    closing="└" + "─" * 20,
    attachment="(attachment saved: {path})",
    image="(picture saved: {path} — {title})",  # the title may hold quotes of its own: none around it
)
MARKDOWN = TextStyle(  # DingTalk's robot markdown
    title="#### {title}",
    field="- **{name}**：{value}",
    continued=None,
    progress="- **{label}**：{percent}",
    link="[{label}]({url})",
    button="- {label}：{or_type} `{command}`",
    footer="{footer}",
    between="\n\n",
    limit_chars=4000,  # DingTalk cuts robot markdown around 5,000 characters
)
PLAIN = TextStyle(  # WeCom's text messages
    title="【{title}】",
    field="{name}：{value}",
    continued=None,
    progress="{label}：{percent}",
    link="{label}：{url}",
    button="{label} — {or_type} {command}",
    footer="{footer}",
    limit_bytes=2000,  # WeCom cuts text messages at 2048 bytes
)


def card_lines(card: Card, style: TextStyle, *, buttons: bool = True, title: bool = True) -> list[str]:
    """The card's lines in `style`, in the current language (see `render`)."""
    lines = [style.title.format(title=card.title)] if title else []
    for name, value in card.fields:
        first, *rest = str(value).splitlines() or [""]
        if style.continued is None:
            lines.append(style.field.format(name=name, value=str(value)))
        else:
            lines.append(style.field.format(name=name, value=first))
            lines += [style.continued.format(line=line) for line in rest]
    if card.progress is not None:
        filled = int(round(card.progress * 20))
        lines.append(
            style.progress.format(
                label=t("Progress"), percent=f"{card.progress:.0%}", bar="█" * filled + "·" * (20 - filled)
            )
        )
    if card.link:
        lines.append(style.link.format(label=card.link[0], url=card.link[1]))
    if buttons:
        lines += [
            style.button.format(label=b.label, or_type=t("or type"), command=b.text_command)
            for b in card.buttons
            if b.text_command
        ]
    if card.footer:
        lines.append(style.footer.format(footer=card.footer))
    if style.closing is not None:
        lines.append(style.closing)
    return lines


def render(message: Message, style: TextStyle, locale: str | None = None, *, buttons: bool = True) -> str:
    """The whole message as text: its text, its card, its attachments; `locale` is the language of the
    renderer's own words (the messenger's)."""
    with i18n.using(locale or i18n.current()):
        parts = [message.text] if message.text else []
        if message.card is not None:
            parts.append("\n".join(card_lines(message.card, style, buttons=buttons)))
        text = style.between.join(parts)
        if style.attachment is not None and message.attachments:
            text = "\n".join(
                [*([text] if text else []), *(t(style.attachment, path=p) for p in message.attachments)]
            )
        if style.image is not None and message.images:
            text = "\n".join(
                [
                    *([text] if text else []),
                    *(t(style.image, path=i.path, title=i.title) for i in message.images),
                ]
            )
    return fit(text, style)


def fit(text: str, style: TextStyle) -> str:
    """`text` cut, with "…", to the style's limit (a cut never splits a character)."""
    if style.limit_chars is not None and len(text) > style.limit_chars:
        text = text[: style.limit_chars - 1] + "…"
    if style.limit_bytes is not None and len(text.encode()) > style.limit_bytes:
        text = text.encode()[: style.limit_bytes - len("…".encode())].decode("utf-8", errors="ignore") + "…"
    return text


def picture_fallback(message: Message, why: str) -> str:
    """What a chat says when a picture could not be shown: why, in a few words, and the report page's
    link when the message has one — never the server's file path (the console prints that: it's local)."""
    url = message.card.link[1] if message.card is not None and message.card.link else None
    if url:
        return i18n.t(
            "I couldn't show the picture here ({why}); the report page has it: {url}", why=why, url=url
        )
    return i18n.t("I couldn't show the picture here ({why}).", why=why)
