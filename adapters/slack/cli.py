"""`postroom slack …`, plugged into the `postroom` command through the `postroom.cli` entry point."""

from __future__ import annotations

import click


@click.group("slack")
def slack() -> None:
    """The Slack app: its manifest."""


@slack.command("manifest")
@click.option(
    "--url", default=None, help="Postroom's public base URL (web.base_url); Slack calls <url>/slack/events."
)
@click.option(
    "--socket", "socket_mode", is_flag=True, help="Socket Mode: no public URL, the bot connects out."
)
@click.option("--name", default="Postroom", show_default=True, help="The app's name in Slack.")
@click.pass_context
def manifest(ctx: click.Context, url: str | None, socket_mode: bool, name: str) -> None:
    """Print the Slack app manifest (YAML) to paste into Slack's app settings."""
    from adapters.slack.manifest import build_manifest, registered_specs, render

    if not socket_mode and not url:
        raise click.UsageError("Give --url <public base URL> (HTTP mode), or --socket for Socket Mode.")
    if url and not url.startswith("https://") and not url.startswith("http://"):
        raise click.UsageError("--url must start with https:// (Slack only calls https URLs).")
    args = "--socket" if socket_mode else f"--url {url}"
    click.echo(
        render(
            build_manifest(registered_specs(), url, socket_mode=socket_mode, name=name),
            command_line=f"postroom slack manifest {args}",
        ),
        nl=False,
    )
