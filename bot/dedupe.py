"""Delivery keys seen lately, for adapters whose platform redelivers (DingTalk Stream, WeCom callbacks).

Platform-neutral so every adapter can use it (adapters must not import each other)."""

from __future__ import annotations

from collections import OrderedDict


class Seen:
    """Delivery keys handled lately: a redelivery within the window is dropped before any work.
    The core's processed_events table is what makes one effect durable."""

    def __init__(self, size: int = 4096):
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first(self, key: str) -> bool:
        """True the first time `key` is offered (within the last `size` keys), False after that."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True
