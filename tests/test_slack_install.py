"""Installing the Slack app: the manifest covers every command, and `postroom serve` answers Slack."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from adapters.slack.manifest import BOT_SCOPES, registered_specs, slash_commands
from bot.app import Runtime, build_app, configured_adapters
from bot.cli import main
from bot.config import ConfigError, load_settings
from tests.conftest import make_settings
from tests.slack_fake import FakeSlack, command_body, form, signed_headers
from tests.slack_rig import U_HR, directory, slack_section
from tests.smtp import free_port

MANIFEST = Path(__file__).parents[1] / "manifests" / "slack.yaml"


def registered_heads() -> set[str]:
    return {"/" + spec.path[0] for spec in registered_specs()} | {"/postroom"}


def test_the_printed_manifest_has_every_command_scope_event_and_url() -> None:
    result = CliRunner().invoke(main, ["slack", "manifest", "--url", "https://bot.corp.example/"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)
    commands = manifest["features"]["slash_commands"]
    assert (
        {c["command"] for c in commands}
        == registered_heads()
        >= {"/addgroup", "/campaign", "/approve", "/reject"}
    )
    for c in commands:
        assert c["url"] == "https://bot.corp.example/slack/events" and c["should_escape"] is True
        assert c["description"] and len(c["command"]) <= 32 and c["command"] == c["command"].lower()
    addgroup = next(c for c in commands if c["command"] == "/addgroup")
    assert addgroup["usage_hint"] == "<group> <member> [...] [--unknown-ok]"
    assert manifest["oauth_config"]["scopes"]["bot"] == BOT_SCOPES
    settings = manifest["settings"]
    assert settings["event_subscriptions"] == {
        "request_url": "https://bot.corp.example/slack/events",
        "bot_events": ["team_join", "user_change"],
    }
    assert settings["interactivity"] == {
        "is_enabled": True,
        "request_url": "https://bot.corp.example/slack/events",
    }
    assert settings["socket_mode_enabled"] is False


def test_the_socket_mode_manifest_has_no_urls_and_a_bad_call_gets_a_usage_line() -> None:
    result = CliRunner().invoke(main, ["slack", "manifest", "--socket"])
    manifest = yaml.safe_load(result.output)
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert "url" not in manifest["features"]["slash_commands"][0]
    assert "request_url" not in manifest["settings"]["interactivity"]
    missing = CliRunner().invoke(main, ["slack", "manifest"])
    assert missing.exit_code == 2 and "Give --url" in missing.output


def test_the_manifest_in_the_repository_lists_every_command_the_bot_answers() -> None:
    shipped = {c["command"] for c in yaml.safe_load(MANIFEST.read_text())["features"]["slash_commands"]}
    assert shipped == registered_heads(), (
        "manifests/slack.yaml is out of date: postroom slack manifest --url https://postroom.example.com "
        "> manifests/slack.yaml"
    )
    assert len(slash_commands(registered_specs())) == len(shipped)


def test_a_half_configured_slack_is_a_configuration_error(tmp_path: Path) -> None:
    base = {"database": {"url": f"sqlite+aiosqlite:///{tmp_path}/x.db"}}
    with pytest.raises(ConfigError, match="signing_secret"):
        configured_adapters(load_settings(read_file=False, **base, slack={"bot_token": "xoxb-1"}))
    with pytest.raises(ConfigError, match="app_token"):
        configured_adapters(
            load_settings(read_file=False, **base, slack={"bot_token": "xoxb-1", "mode": "socket"})
        )
    assert configured_adapters(load_settings(read_file=False, **base)) == []  # not configured: not started


async def test_serve_answers_a_signed_addgroup_over_real_http(
    database_url: str, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fake = await FakeSlack(users=directory()).start()
    port = free_port()
    settings = make_settings(database_url, smtp.port, tmp_path, slack=slack_section(fake))
    app = await build_app(settings)
    core = app.core
    runtime = Runtime(app)
    try:
        for adapter in configured_adapters(settings):  # what `postroom serve` does
            app.attach(adapter)
            await adapter.start(core)
        await runtime.start_web("127.0.0.1", port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for text in ("/newgroup eng", "/addgroup eng <@U0ALICE|alice>"):
                name, _, rest = text.partition(" ")
                body = form(command_body(fake, U_HR, name, rest))
                started = time.monotonic()
                resp = await http.post("/slack/events", content=body, headers=signed_headers(body))
                assert resp.status_code == 200 and time.monotonic() - started < 3.0
            assert resp.json()["text"].startswith("Added alice@corp.example to eng@corp.example")
            stale = signed_headers(body, timestamp=int(time.time()) - 600)
            assert (await http.post("/slack/events", content=body, headers=stale)).status_code == 401
    finally:
        await runtime.stop()
        await fake.stop()


async def test_a_refused_bot_token_stops_serve_with_a_sentence(tmp_path: Path) -> None:
    from bot.errors import UserError
    from tests.slack_fake import BOT_TOKEN

    fake = await FakeSlack().start()
    try:
        fake.fail("auth.test", body={"ok": False, "error": "invalid_auth"})
        settings = load_settings(
            read_file=False,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
            slack=slack_section(fake),
        )
        (adapter,) = configured_adapters(settings)
        with pytest.raises(UserError) as caught:
            await adapter.start(None)  # type: ignore[arg-type]
        assert caught.value.sentence == "Slack refused the bot token (invalid_auth); check slack.bot_token."
        assert BOT_TOKEN not in caught.value.sentence
    finally:
        await fake.stop()
