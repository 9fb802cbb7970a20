"""What every platform provider offers, and how it says that something did not work.

A provider is told what to change and answers, per address, whether the platform confirmed it
(`done`), refused it for good (`refused`, with a sentence why), or could not take it now (`retry`,
with when to try again). It never writes Postroom's database: the outbox does, from these answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

ROLES = ("member", "manager", "owner")


class ProviderError(Exception):
    """A platform failure, as one sentence for HR or an admin (never a token, never a traceback)."""

    def __init__(self, sentence: str):
        super().__init__(sentence)
        self.sentence = sentence


class RetryLater(ProviderError):
    """The platform could not take the call now (down, throttling, a quota): try again after `after_s`."""

    def __init__(self, sentence: str, after_s: float | None = None):
        super().__init__(sentence)
        self.after_s = after_s


class Refused(ProviderError):
    """The platform refused this change for good (an unknown address, external members not allowed)."""


class GroupRefused(Refused):
    """The platform refuses to let Postroom manage this group at all (a Microsoft distribution list)."""


class GroupMissing(ProviderError):
    """The group does not exist on the platform."""


@dataclass(frozen=True)
class RemoteMember:
    email: str
    role: str = "member"  # member | manager | owner


@dataclass(frozen=True)
class RemoteGroup:
    address: str
    name: str | None = None
    external_allowed: bool | None = None  # None: the platform has no such setting


@dataclass
class Pushed:
    """What the platform said of one push, per address."""

    done: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    retry: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None

    def fail_all(self, emails: list[str], error: ProviderError) -> None:
        for email in emails:
            if isinstance(error, RetryLater) or not isinstance(error, Refused):
                self.retry[email] = error.sentence
            else:
                self.refused[email] = error.sentence
        if isinstance(error, RetryLater) and error.after_s is not None:
            self.retry_after_s = max(self.retry_after_s or 0, error.after_s)

    def merge(self, other: Pushed) -> None:
        self.done |= other.done
        self.refused.update(other.refused)
        self.retry.update(other.retry)
        if other.retry_after_s is not None:
            self.retry_after_s = max(self.retry_after_s or 0, other.retry_after_s)


class Provider(ABC):
    """A platform where groups live. `calls` counts the API calls made (benchmarks, tests)."""

    name: str = ""
    label: str = ""  # how people call the platform
    # True where the platform's only membership write replaces the whole list (WeCom mail):
    # the outbox then writes the full desired list, computed from Postroom's database.
    whole_list_writes: bool = False
    # True where one call can carry changes of several groups (Graph's $batch): the outbox then hands
    # all of a push's groups to `push_many` at once.
    cross_group_batches: bool = False

    @property
    @abstractmethod
    def calls(self) -> int: ...

    @abstractmethod
    async def list_groups(self) -> list[RemoteGroup]: ...

    @abstractmethod
    async def members(self, address: str) -> list[RemoteMember]: ...

    async def add(self, address: str, members: list[RemoteMember]) -> Pushed:
        out = Pushed()
        for m in members:
            try:
                await self.add_one(address, m)
                out.done.add(m.email)
            except GroupMissing:
                raise
            except ProviderError as exc:
                out.fail_all([m.email], exc)
        return out

    async def remove(self, address: str, emails: list[str]) -> Pushed:
        out = Pushed()
        for email in emails:
            try:
                await self.remove_one(address, email)
                out.done.add(email)
            except GroupMissing:
                raise
            except ProviderError as exc:
                out.fail_all([email], exc)
        return out

    async def add_one(self, address: str, member: RemoteMember) -> None:
        raise NotImplementedError

    async def remove_one(self, address: str, email: str) -> None:
        raise NotImplementedError

    async def push_many(self, work: dict[str, tuple[list[RemoteMember], list[str]]]) -> dict[str, Pushed]:
        """Adds and removes of several groups at once (providers with `cross_group_batches`)."""
        raise NotImplementedError

    async def set_members(self, address: str, members: list[RemoteMember]) -> None:
        """Replace the whole membership (providers with `whole_list_writes`)."""
        raise NotImplementedError

    @abstractmethod
    async def create_group(
        self, address: str, name: str | None, external_allowed: bool, first: list[RemoteMember]
    ) -> None: ...

    @abstractmethod
    async def check(self) -> str:
        """One read-only call; what works, in one sentence (raises ProviderError when it does not)."""

    async def aclose(self) -> None:
        return None
