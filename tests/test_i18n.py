"""Every text a person reads goes through bot.i18n.t, and every such text has a zh_CN translation."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot import i18n
from bot.app import build_app
from bot.commandline import _a
from tests.conftest import HR

BOT = Path(__file__).parents[1] / "bot"
# Modules whose words reach an administrator at start-up or a recipient's browser, not a chat.
EXEMPT = {"cli.py", "config.py", "demo.py", "db/engine.py", "web.py", "db/migrations/env.py"}
USER_FACING = {"UserError", "PermissionDenied", "TemplateProblem", "Message"}
# Card and Button arguments that a person reads (the rest are ids, styles and commands).
READ_KW = {"title", "fields", "footer", "label", "confirm", "link"}


def modules() -> list[Path]:
    return sorted(
        p
        for p in BOT.rglob("*.py")
        if str(p.relative_to(BOT)) not in EXEMPT and "migrations/versions" not in str(p)
    )


def t_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "t"
            and node.args
        ):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(BOT)))
def test_every_text_in_the_module_is_translated(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    zh = i18n.catalog("zh_CN")
    missing = [f"line {line}: {text!r}" for line, text in t_calls(tree) if text not in zh]
    assert not missing, f"{path.name}: no zh_CN translation for\n" + "\n".join(missing)
    wrong = [f"line {line}: {text!r}" for line, text in t_calls(tree) if fields(zh[text]) != fields(text)]
    assert not wrong, f"{path.name}: the translation's placeholders differ for\n" + "\n".join(wrong)


def literal_text(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(re.search(r"[A-Za-z]{3}", node.value))
    if isinstance(node, ast.JoinedStr):
        return any(literal_text(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return literal_text(node.left) or literal_text(node.right)
    return False


def untranslated_inside(node: ast.AST) -> list[ast.AST]:
    """String literals with words in them, outside any t() call."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "t":
        return []
    if isinstance(node, ast.Constant | ast.JoinedStr) and literal_text(node):
        return [node]
    if isinstance(node, ast.JoinedStr):
        return []
    return [found for child in ast.iter_child_nodes(node) for found in untranslated_inside(child)]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(BOT)))
def test_no_untranslated_text_reaches_a_person(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    raw = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id in USER_FACING and node.args and literal_text(node.args[0]):
            raw.append(f"line {node.lineno}: {node.func.id}({ast.unparse(node.args[0])[:70]})")
        if node.func.id in ("Card", "Button"):
            readable = [kw.value for kw in node.keywords if kw.arg in READ_KW]
            readable += node.args[:1] if node.func.id == "Card" else node.args[1:2]
            for part in readable:
                for bad in untranslated_inside(part):
                    raw.append(f"line {bad.lineno}: {node.func.id}(… {ast.unparse(bad)[:60]} …)")
    assert not raw, f"{path.name}: text not passed through t():\n" + "\n".join(raw)


def test_every_command_summary_flag_and_argument_is_translated() -> None:
    from bot.commands import all_specs

    zh = i18n.catalog("zh_CN")
    missing = set()
    for spec in all_specs():
        missing |= {spec.summary} - zh.keys()
        missing |= {f.help for f in spec.flags if f.help} - zh.keys()
        for a in spec.args:
            missing |= {a.name, _a(a.name)} - zh.keys()
    assert not missing, "no zh_CN translation for: " + ", ".join(sorted(missing))


def test_catalog_files_are_valid_and_have_no_stale_duplicates() -> None:
    import json

    seen: dict[str, str] = {}
    for path in sorted((BOT / "locale" / "zh_CN").glob("*.json")):
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            assert value.strip(), f"{path.name}: empty translation for {key!r}"
            assert seen.get(key, value) == value, f"{key!r} is translated differently in two catalogs"
            seen[key] = value


async def test_a_chinese_console_answers_in_chinese_and_lang_switches(settings) -> None:  # type: ignore[no-untyped-def]
    import io

    app = await build_app(settings)

    core = app.core
    console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
    console.locale = "zh_CN"
    app.attach(console)
    await console.start(core)
    try:
        reply = await console.say("/frobnicate")
        assert reply is not None and "我不认识" in reply.text
        reply = await console.say("/lang en")
        assert reply is not None and "English" in reply.text
        reply = await console.say("/frobnicate")
        assert reply is not None and "I don't know the command" in reply.text
        reply = await console.say("/lang klingon")
        assert reply is not None and "Usage: /lang" in reply.text
    finally:
        await app.close()
