"""Scheduled jobs for campaigns, run by the persistent scheduler (bot/scheduler.py)."""

from __future__ import annotations


async def start_campaign(campaign_id: int) -> None:
    """A scheduled campaign's start time has come: send it (the engine re-checks the approval)."""
    from bot.commands.campaigns import start_sending
    from bot.scheduler import current_core

    start_sending(current_core(), campaign_id, "scheduler")
