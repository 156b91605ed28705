"""API keys (`--api-key`, `--api-key-file`): `Authorization: Bearer <key>` on every route but
/health and /metrics.

/metrics is public by default (unlike llama.cpp, where it needs the key) so that Prometheus
and the Kubernetes monitors scrape a keyed server without holding its key: the metrics
carry counts and timings only, never prompts (/slots, which shows prompts, stays keyed).
`--metrics-require-key` keys it too. /health never shows slot contents.

Keys are compared in constant time (every key is checked, so the time does not
say which one nearly matched) and never logged. The static web page is public, as
in the reference server, so a browser can load it and then send the key.
"""

from __future__ import annotations

import hmac
import json
from typing import Callable

from ..errors import APIError
from ..settings import ServerSettings

PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/metrics"})


def public_paths(settings: ServerSettings) -> frozenset[str]:
    """The routes open without a key: /health, and /metrics unless --metrics-require-key."""
    return PUBLIC_PATHS - {"/metrics"} if settings.metrics_require_key else PUBLIC_PATHS


def read_key_file(path: str) -> list[str]:
    """One key per line; blank lines and `#` comments ignored. Raises ValueError."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"--api-key-file: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--api-key-file: cannot read {path}: {exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"--api-key-file: {path} holds no keys (one key per line; '#' starts a comment)")
    return keys


def load_keys(settings: ServerSettings) -> list[str]:
    keys = [k for k in settings.api_key if k]
    if settings.api_key_file:
        keys += read_key_file(settings.api_key_file)
    return keys


def key_matches(given: str, keys: list[str]) -> bool:
    ok = False
    for key in keys:  # no early exit
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


def presented_key(headers: dict[bytes, bytes]) -> str:
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip()


class APIKeyMiddleware:
    """ASGI middleware: 401 `authentication_error` for a missing or wrong key."""

    def __init__(self, app, keys: list[str], is_public: Callable[[str, str], bool], public_paths: frozenset[str] = PUBLIC_PATHS):
        self.app = app
        self.keys = keys
        self.is_public = is_public
        self.public_paths = public_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys:
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS" or path in self.public_paths or self.is_public(method, path):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = presented_key(headers)
        if given and key_matches(given, self.keys):
            return await self.app(scope, receive, send)
        message = "Invalid API Key" if given else "Missing API key: send 'Authorization: Bearer <key>'"
        body = json.dumps(APIError(message, "authentication_error").to_dict()).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]})
        await send({"type": "http.response.body", "body": body})
