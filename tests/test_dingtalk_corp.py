"""DingTalk needs dingtalk.corp_id: without it, events and clicks from any organisation that installs the
app would be obeyed. `postroom serve` says so in one sentence naming the key."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from adapters.dingtalk import from_settings
from adapters.dingtalk.adapter import DingTalkAdapter
from bot.config import ConfigError
from tests.conftest import make_settings
from tests.smtp import free_port
from tests.test_cli import POSTROOM, clean_env

DING = {"client_id": "ding-app", "client_secret": "ding-secret"}


def test_a_dingtalk_app_without_corp_id_is_a_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, dingtalk=DING)
    with pytest.raises(ConfigError, match=r"dingtalk\.corp_id must be set") as refused:
        from_settings(settings)
    assert "manifests/dingtalk/README.md" in str(refused.value)
    with_corp = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, dingtalk={**DING, "corp_id": "ding-corp"}
    )
    adapter = from_settings(with_corp)
    assert isinstance(adapter, DingTalkAdapter)
    assert (
        adapter._our_corp("ding-corp") and not adapter._our_corp("ding-other") and not adapter._our_corp("")
    )
    assert not adapter._our_corp(None)


def test_an_adapter_built_without_corp_id_trusts_no_organisation(tmp_path: Path) -> None:
    """The factory refuses it; an adapter made another way still obeys nobody rather than everybody."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, dingtalk=DING)
    adapter = DingTalkAdapter(settings.dingtalk)
    assert not adapter._our_corp("ding-corp") and not adapter._our_corp("") and not adapter._our_corp(None)


def test_serve_names_the_missing_corp_id_in_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "x.db"}"\n'
        f'[web]\nport = {free_port()}\nsecret = "{secrets.token_urlsafe(32)}"\n'
        '[org]\nname = "Example Corp"\ndomains = ["corp.example"]\npostal_address = "1 Example Street"\n'
        f'[dingtalk]\nclient_id = "ding-app"\nclient_secret = "{secrets.token_urlsafe(48)}"\n'
    )
    done = subprocess.run(
        [POSTROOM, "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: dingtalk.client_id is set, so dingtalk.corp_id must"
    )
