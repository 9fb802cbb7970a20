"""The attacker tryout of the reports (issue 15): settings and arguments that broke or stretched them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError
from tests.conftest import HR, make_settings


@pytest.mark.parametrize("hours", [float("inf"), float("nan"), 1e12, 0.0001, 0.5, 721, -1])
def test_report_link_hours_outside_one_hour_to_thirty_days_is_refused_naming_the_range(
    tmp_path: Path, hours: float
) -> None:
    with pytest.raises(ConfigError, match=r"report_link_hours.*from 1 to 720 hours \(1 hour to 30 days\)"):
        make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, campaigns={"report_link_hours": hours}
        )


@pytest.mark.parametrize("hours", [1, 1.5, 72, 720])
def test_report_link_hours_from_one_hour_to_thirty_days_is_taken(tmp_path: Path, hours: float) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, campaigns={"report_link_hours": hours}
    )
    assert settings.campaigns.report_link_hours == hours


@pytest.mark.parametrize("months", ["³", "①", "²", "３", "٣", "١٢", "0003", "1_2"])
async def test_report_usage_months_takes_ascii_digits_only(bot, months: str) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(HR, f"/report usage --months {months}")
    assert f"“{months}”" in reply and "months" in reply and "give 1 to 24" in reply, reply
    assert "internal error" not in reply.lower() and "Usage review" not in reply


async def test_report_usage_months_in_ascii_digits_is_taken(bot) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(HR, "/report usage --months 12")
    assert "is not a number of months" not in reply and "internal error" not in reply.lower(), reply
