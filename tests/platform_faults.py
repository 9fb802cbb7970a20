"""Faults a test can put on a fake platform API: an outage, throttling with Retry-After, a failure
for some addresses only (a partial failure)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    down: bool = False  # every call answers 503
    throttle: int = 0  # the next N calls answer 429 with Retry-After
    retry_after: str = "1"
    fail: dict[str, int] = field(default_factory=dict)  # address -> how many more writes of it fail (500)

    def throttled(self) -> bool:
        if self.throttle > 0:
            self.throttle -= 1
            return True
        return False

    def fails(self, email: str) -> bool:
        left = self.fail.get(email.lower(), 0)
        if left > 0:
            self.fail[email.lower()] = left - 1
            return True
        return False
