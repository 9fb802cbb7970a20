"""The core never imports an adapter or a messenger SDK (import-linter checks it too, in `make test`)."""

from __future__ import annotations

import ast
from pathlib import Path

BOT = Path(__file__).parents[1] / "bot"
FORBIDDEN = ("adapters", "slack_bolt", "slack_sdk", "dingtalk_stream")


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an import statement names, anywhere in the file (inside functions too)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    return names


def test_bot_imports_no_adapter_and_no_messenger_sdk() -> None:
    files = sorted(BOT.rglob("*.py"))
    assert len(files) > 30
    offenders = [
        f"{path.relative_to(BOT.parent)} imports {name}"
        for path in files
        for name in imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        if name.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


def test_the_scan_sees_imports_wherever_they_are() -> None:
    source = (
        "import slack_sdk.web\n"
        "def f():\n    from adapters.console import ConsoleAdapter\n"
        "import importlib\nimportlib.import_module('dingtalk_stream')\n"
        "from bot.events import Message\n"
    )
    found = sorted(n for n in imported_modules(ast.parse(source)) if n.split(".")[0] in FORBIDDEN)
    assert found == ["adapters.console", "dingtalk_stream", "slack_sdk.web"]
