"""What keeps the service up under abuse and its pages inert: a cap on request bodies, security
headers on every response, and refused anonymous requests counted per address and window
instead of one audit entry each."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders

from securetrain.store import Store
from securetrain.store.auditlog import record

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000"
MAX_NAMES = 20  # account names kept per address and window in a refusal entry


class BodyLimit:
    """HTTP 413 for a request body over ``limit`` bytes, before the app reads any of it: a
    declared Content-Length over the limit is refused at once, and a body without one (chunked)
    is counted as it arrives and refused as soon as it passes the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        messages, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            messages.append(message)
            more = message.get("more_body", False)

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = (
            b'{"detail":"The request body is larger than this service accepts (%d bytes)."}'
            % self.limit
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Headers on every response: no MIME sniffing, no referrer, a CSP that allows nothing
    unless the page sets its own, and HSTS when the request came over TLS (directly, or
    through a reverse proxy uvicorn trusts)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", API_CSP)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if scope.get("scheme") == "https":
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RefusalCounter:
    """Refused anonymous requests (failed and throttled log-ins, requests without valid
    credentials), counted per client address. When a window of ``window`` seconds ends (seen
    on the next request, or at shutdown), each address that was refused in it gets one audit
    entry ``auth.refused`` with its counts, so a flood of guesses adds one entry per address
    and window, not one per guess."""

    def __init__(
        self, store: Store, window: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.window, self.clock = store, window, clock
        self._lock = threading.Lock()
        self._start = clock()
        self._counts: dict[str, Counter[str]] = {}
        self._names: dict[str, set[str]] = {}

    def count(self, address: str, kind: str, name: str | None = None) -> None:
        self.tick()
        with self._lock:
            self._counts.setdefault(address, Counter())[kind] += 1
            names = self._names.setdefault(address, set())
            if name is not None and len(names) < MAX_NAMES:
                names.add(name[:64])

    def tick(self) -> None:
        """Write the last window's entries if it has ended."""
        if self.clock() >= self._start + self.window:
            self.flush()

    def flush(self) -> None:
        """Write one entry per refused address for the window so far, and start a new one."""
        with self._lock:
            start, end = self._start, self.clock()
            counts, names = self._counts, self._names
            self._start, self._counts, self._names = end, {}, {}
        for address in sorted(counts):
            record(
                self.store,
                "auth.refused",
                address,
                {
                    "from": _stamp(start),
                    "to": _stamp(end),
                    "counts": dict(sorted(counts[address].items())),
                    "names": sorted(names[address]),
                },
                actor="anonymous",
            )


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
