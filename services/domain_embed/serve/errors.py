"""The gateway's error types and the ONE mapping from error type to HTTP status.

Every error response is JSON: ``{"object": "error", "message": ..., "type": ..., "code": status}``.
"""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response


class ApiError(Exception):
    status = 500
    kind = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status, kind = 400, "invalid_request"


class Unauthorized(ApiError):
    status, kind = 401, "unauthorized"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        # RFC 6750: a 401 names the scheme it wants, so a client knows to send 'Authorization: Bearer <key>'
        super().__init__(message, {"WWW-Authenticate": 'Bearer realm="domain-embed"', **(headers or {})})


class ModelNotFound(ApiError):
    status, kind = 404, "model_not_found"


class BodyTooLarge(ApiError):
    status, kind = 413, "body_too_large"


class QueueFull(ApiError):
    status, kind = 429, "queue_full"


class TritonUnavailable(ApiError):
    status, kind = 503, "unavailable"


class InferenceFailed(ApiError):
    status, kind = 500, "inference_failed"


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"object": "error", "message": message, "type": kind, "code": status})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def api_error_handler(_: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.kind, exc.headers)


async def validation_handler(_: Request, exc: RequestValidationError) -> Response:
    parts = []
    for e in exc.errors()[:5]:
        if e.get("type") == "json_invalid":  # its loc is a byte position, not a field
            at = e.get("loc", (None, None))[-1]
            why = (e.get("ctx") or {}).get("error") or e.get("msg")
            return error_response(422, f"the request body is not valid JSON ({why} at character {at}); send a JSON "
                                  f"object such as {{\"input\": [\"text\"], \"model\": \"...\", "
                                  f"\"input_type\": \"query\"}}", "validation_error")
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return error_response(422, "invalid request: " + "; ".join(parts), "validation_error")


async def http_handler(_: Request, exc: StarletteHTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail), "http_error", getattr(exc, "headers", None))


async def unexpected_handler(_: Request, exc: Exception) -> Response:
    # the last resort (Starlette's ServerErrorMiddleware): JSON, never a plain-text 500
    return error_response(500, f"internal error ({type(exc).__name__}); the gateway log has the traceback",
                          "internal_error")


def install(app) -> None:
    app.add_exception_handler(Exception, unexpected_handler)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
