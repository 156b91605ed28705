"""API errors in the llama.cpp / OpenAI shape: {"error": {"code", "message", "type"}}."""

from __future__ import annotations

ERROR_CODES = {
    "invalid_request_error": 400,
    "exceed_context_size_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "server_error": 500,
    "not_supported_error": 501,
    "unavailable_error": 503,
}


class APIError(Exception):
    """An error answered to the client; `type` picks the HTTP status."""

    def __init__(self, message: str, type: str = "invalid_request_error", code: int | None = None, **extra):
        super().__init__(message)
        self.message = message
        self.type = type
        self.code = code if code is not None else ERROR_CODES.get(type, 500)
        self.extra = extra

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message, "type": self.type}
        body.update(self.extra)
        return {"error": body}


def invalid(message: str, **extra) -> APIError:
    return APIError(message, "invalid_request_error", **extra)
