"""Plain ASGI middleware that must act before FastAPI parses a body: the body size limit, the API key,
and counting /v1 requests by status for /metrics (errors included, which handlers never see)."""

from __future__ import annotations

import secrets

from starlette.exceptions import HTTPException

from rocmforge_server.errors import APIError


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is over the limit of {limit} bytes (--max-body-bytes)",
                    code="request_too_large")


class BodyLimit:
    """413 for a body over `limit` bytes: by Content-Length at once, else while it is read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit).response()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a chunked body: FastAPI passes an HTTPException through unchanged
                raise HTTPException(413, _too_large(self.limit).message)
            return message

        await self.app(scope, counted, send)


class ApiKey:
    """With --api-key, every /v1 route needs `Authorization: Bearer KEY`; /health and /metrics stay open
    for probes and scrapers."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.key.encode()):
            return await self.app(scope, receive, send)
        error = APIError(401, "invalid or missing API key (send the header Authorization: Bearer KEY)",
                         code="invalid_api_key")
        await error.response()(scope, receive, send)


class CountRequests:
    def __init__(self, app, counter, paths: tuple[str, ...]):
        self.app, self.counter, self.paths = app, counter, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)

        async def watched(message):
            if message["type"] == "http.response.start":
                # unknown paths share one label, so a scanner cannot grow the metric without bound
                path = scope["path"] if scope["path"] in self.paths else "other"
                self.counter.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, watched)
