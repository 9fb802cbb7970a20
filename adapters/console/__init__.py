from adapters.console.adapter import ConsoleAdapter, render_message

__all__ = ["ConsoleAdapter", "render_message"]


def from_settings(settings, *, as_email: str = "", **options):
    """Entry point `postroom.adapters:console`. The console always runs when asked for."""
    return ConsoleAdapter(as_email or "admin@" + settings.org.domains[0], **options)
