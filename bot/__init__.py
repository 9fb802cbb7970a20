"""Postroom's platform-neutral core. Nothing here imports an adapter or a messenger SDK."""

__version__ = "0.1.0"
