"""Request logs: one line per HTTP request, `--log-format json|text`.

Fields: method, path, status, duration, slot(s), token counts. The prompt is never
logged unless `--verbose` (then the request's `prompt` / `messages` / `input` /
`content`, cut at 2000 characters). `/health` and `/metrics` requests (probes, scrapes)
are logged only with `--verbose`. `--log-disable` silences everything.

With `--log-format json` every log record of the server is one JSON object per line
(`JsonFormatter`); request lines carry `"msg": "request"` plus their fields.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

from .record import RequestRecord

log = logging.getLogger("kubellama.request")

QUIET_PATHS = frozenset({"/health", "/v1/health", "/metrics"})
PROMPT_KEYS = ("prompt", "messages", "input", "content")
MAX_PROMPT_CHARS = 2000


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, msg and any `fields` extra."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def install_formatter(log_format: str) -> None:
    """Switch the root handlers to JSON lines for `--log-format json`."""
    if log_format != "json":
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())


def _prompt_of(body: bytes | bytearray | None) -> Any:
    if not body:
        return None
    try:
        data = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    for key in PROMPT_KEYS:
        if key in data:
            value = data[key]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            return text[:MAX_PROMPT_CHARS]
    return None


def request_fields(rec: RequestRecord, *, verbose: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "method": rec.method,
        "path": rec.path,
        "status": rec.status,
        "duration_ms": round(rec.duration * 1e3, 2),
    }
    if rec.results:
        slots = rec.slots
        fields["slot"] = slots[0] if len(slots) == 1 else slots
        fields.update(rec.totals())
        reasons = sorted({r.finish_reason for r in rec.results if r.finish_reason})
        if reasons:
            fields["finish_reason"] = reasons[0] if len(reasons) == 1 else reasons
    if rec.client:
        fields["client"] = rec.client
    if verbose:
        prompt = _prompt_of(rec.body)
        if prompt is not None:
            fields["prompt"] = prompt
    return fields


def text_line(fields: dict[str, Any]) -> str:
    line = f"{fields['method']} {fields['path']} {fields['status']} {fields['duration_ms']:.1f}ms"
    extras = []
    if "slot" in fields:
        extras.append(f"slot={fields['slot']}")
    for key, short in (("tokens_prompt", "prompt"), ("tokens_cached", "cached"), ("tokens_predicted", "predicted")):
        if key in fields:
            extras.append(f"{short}={fields[key]}")
    if "finish_reason" in fields:
        extras.append(f"finish={fields['finish_reason']}")
    if "prompt" in fields:
        extras.append("prompt=" + json.dumps(fields["prompt"], ensure_ascii=False))
    return line + (" " + " ".join(extras) if extras else "")


class RequestLogger:
    def __init__(self, log_format: str = "json", verbose: bool = False, disabled: bool = False):
        self.log_format = log_format
        self.verbose = verbose
        self.disabled = disabled

    @property
    def wants_body(self) -> bool:
        return self.verbose and not self.disabled

    def emit(self, rec: RequestRecord) -> None:
        if self.disabled or (rec.path in QUIET_PATHS and not self.verbose):
            return
        if not log.isEnabledFor(logging.INFO):
            return
        fields = request_fields(rec, verbose=self.verbose)
        if self.log_format == "json":
            log.info("request", extra={"fields": fields})
        else:
            log.info(text_line(fields))
