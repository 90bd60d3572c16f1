"""Errors in OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}, with HTTP statuses."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "server_busy"}


class APIError(Exception):
    """Raised by a handler; becomes one OpenAI-shaped JSON error response."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _location(loc) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'"""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "str", "list[", "int", "float", "bool")):
            out += f".{part}" if out else str(part)  # pydantic names union branches too: not useful
    return out or None


def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        message = f"the body is not valid JSON ({ctx.get('error', first['msg'])})"
        return APIError(400, message, code="invalid_json").response()
    param = _location(first.get("loc", ()))
    message = first["msg"].removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    return APIError(400, message, param=param, code="invalid_value").response()


def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return APIError(exc.status_code, detail, headers=getattr(exc, "headers", None)).response()


def api_error(_request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


def install(app) -> None:
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
