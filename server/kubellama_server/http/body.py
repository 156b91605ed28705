"""Reading JSON request bodies with client-friendly errors."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from ..errors import invalid


async def json_body(request: Request, *, require_object: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if require_object:
            raise invalid("request body is empty: expected a JSON object")
        return None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None
    if require_object and not isinstance(data, dict):
        raise invalid("request body must be a JSON object")
    return data
