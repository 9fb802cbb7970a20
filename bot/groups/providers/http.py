"""HTTP to a platform's API, as every provider needs it: a token in the header (fetched again once when
the platform says it expired), 429 and 503 waited out as `Retry-After` says when that is short (else
the call is `RetryLater` and the outbox tries again then), quota errors backed off, failures worded
without the URL (its query may carry a secret), and every call counted."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bot.groups.providers.base import RetryLater

TokenSource = Callable[[bool], Awaitable[str]]  # fresh=True: do not use a cached token
INLINE_TRIES = 4


def retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ApiClient:
    def __init__(
        self,
        label: str,
        base_url: str,
        *,
        timeout_s: float,
        max_inline_wait_s: float,
        token: TokenSource | None = None,
        auth_header: str = "Bearer",
        auth: httpx.Auth | None = None,
        quota_error: Callable[[httpx.Response], bool] | None = None,
        setting: str = "",
    ):
        self.label = label
        # Where the address comes from, named when the platform does not answer: "providers.x.api_url".
        self._where = f" at {setting} = {base_url.rstrip('/')}" if setting else ""
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, auth=auth)
        self._token = token
        self._scheme = auth_header
        self._max_wait = max_inline_wait_s
        self._quota_error = quota_error
        self.calls = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        fresh = refreshed = False
        backoff = 0.25
        for attempt in range(INLINE_TRIES):
            all_headers = dict(headers or {})
            if self._token is not None:
                all_headers["Authorization"] = f"{self._scheme} {await self._token(fresh)}"
                fresh = False
            self.calls += 1
            try:
                response = await self._http.request(
                    method, url, json=json, params=params, headers=all_headers
                )
            except httpx.HTTPError as exc:
                if attempt + 1 < INLINE_TRIES and backoff <= self._max_wait:
                    await asyncio.sleep(backoff)
                    backoff *= 2
                    continue
                detail = str(exc).strip()[:120]
                cause = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
                raise RetryLater(f"{self.label} did not answer{self._where} ({cause}).") from None
            if response.status_code == 401 and self._token is not None:
                if not refreshed:
                    fresh = refreshed = True  # the token expired or was revoked: once more with a new one
                    continue
                raise RetryLater(f"{self.label} refused Postroom's credentials (HTTP 401): check them.")
            wait = None
            if response.status_code in (429, 503) or (
                self._quota_error is not None and self._quota_error(response)
            ):
                wait = retry_after_s(response)
                if wait is None:
                    wait = backoff
                    backoff *= 2
                if wait > self._max_wait or attempt + 1 == INLINE_TRIES:
                    raise RetryLater(
                        f"{self.label} is throttling Postroom (HTTP {response.status_code}).", after_s=wait
                    )
                await asyncio.sleep(wait)
                continue
            if response.status_code >= 500:
                if attempt + 1 < INLINE_TRIES and backoff <= self._max_wait:
                    await asyncio.sleep(backoff)
                    backoff *= 2
                    continue
                raise RetryLater(f"{self.label} answered HTTP {response.status_code}.")
            return response
        raise RetryLater(f"{self.label} kept refusing the token (HTTP 401): check the credentials.")
