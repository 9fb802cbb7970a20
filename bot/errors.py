"""Errors that reach people. Each is one sentence; the core adds the usage line where it helps."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused action. Nothing was changed."""

    def __init__(self, sentence: str, usage: str | None = None):
        super().__init__(sentence)
        self.sentence = sentence
        self.usage = usage


class PermissionDenied(UserError):
    pass
