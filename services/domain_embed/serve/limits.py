"""Admission control: a bounded queue of in-flight requests (429 when full) and a body-size cap (413)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from .errors import BodyTooLarge, QueueFull, error_response


class BoundedQueue:
    """At most ``limit`` requests wait on or run in Triton; the next one is refused at once.

    Triton's dynamic batcher is the real queue; this bound keeps the gateway from piling up
    unbounded work (and memory) when clients send faster than the model can embed.
    """

    def __init__(self, limit: int, retry_after_s: int, on_change=None):
        self.limit, self.retry_after_s = limit, retry_after_s
        self.depth = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_change = on_change or (lambda depth: None)

    @asynccontextmanager
    async def slot(self):
        if self.depth >= self.limit:
            raise QueueFull(f"the request queue is full ({self.limit} requests in flight); retry after "
                            f"{self.retry_after_s}s or raise serve.max_queue",
                            headers={"Retry-After": str(self.retry_after_s)})
        self.depth += 1
        self._idle.clear()
        self._on_change(self.depth)
        try:
            yield
        finally:
            self.depth -= 1
            self._on_change(self.depth)
            if self.depth == 0:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class BodyLimitMiddleware:
    """Pure ASGI: refuse a body over ``max_bytes`` by Content-Length or by counting a chunked body."""

    def __init__(self, app, max_bytes: int, on_reject=None):
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def _reject(self, scope, receive, send) -> None:
        if self.on_reject is not None:  # the request counter: this answer is sent before the app sees it
            self.on_reject(scope)
        # through the one error mapping (errors.BodyTooLarge), as every other error is
        exc = BodyTooLarge(f"request body is over the limit of {self.max_bytes} bytes; send fewer or shorter "
                           f"inputs per request (serve.max_body_bytes)", headers={"connection": "close"})
        await error_response(exc.status, exc.message, exc.kind, exc.headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > self.max_bytes:
                        return await self._reject(scope, receive, send)
                except ValueError:
                    pass
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Read the (bounded) body first, then replay it: counting chunked bodies as they stream
        # would surface as a parse error deep inside FastAPI instead of a clean 413.
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await self._reject(scope, receive, send)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
