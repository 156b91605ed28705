"""The pure policy functions behind the limits: grammar shape, schema bounds, image headers,
URL redaction, body checks, and the per-request checks."""

from __future__ import annotations

import struct

import pytest

from kubellama_server.engine.params import SlotParams
from kubellama_server.engine.task import Task, TaskSink
from kubellama_server.errors import APIError
from kubellama_server.fetch.redact import redact_url
from kubellama_server.http.body import parse_json
from kubellama_server.http.static import is_web_file
from kubellama_server.serving.grammar_guard import check_schema, grammar_shape
from kubellama_server.serving.image_info import image_size
from kubellama_server.serving.limits import Limits, QueueFull, check_tasks


@pytest.mark.parametrize("gbnf, depth, expansion", [
    ('root ::= "a"', 0, 1),
    ('root ::= ("a" ("b"))', 2, 1),
    ('root ::= "((((" [(((] # ((((\n x ::= ("a")', 1, 1),  # literals, classes and comments do not count
    ('root ::= "\\"(" ("a")', 1, 1),  # an escaped quote inside a literal
    ('root ::= "a"{2,5} ("b"{3})', 1, 15),
    ('root ::= "{1000}"', 0, 1),
])
def test_grammar_shape(gbnf, depth, expansion):
    assert grammar_shape(gbnf) == (depth, expansion)


def test_schema_bounds():
    check_schema({"type": "string", "maxLength": 10, "enum": [{"maxLength": 10**9}]}, max_depth=100, max_bytes=1000)
    with pytest.raises(APIError, match="schema.properties.a.maxItems is 101"):
        check_schema({"properties": {"a": {"maxItems": 101}}}, max_depth=100, max_bytes=1000)
    with pytest.raises(APIError, match="minLength is 1001"):
        check_schema({"anyOf": [{"minLength": 1001}]}, max_depth=100, max_bytes=1000)
    with pytest.raises(APIError, match="pattern repeats too much"):
        check_schema({"pattern": "(a{0,20}){0,20}"}, max_depth=100, max_bytes=1000)


def test_image_headers():
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 640, 480) + b"\x08\x02\x00\x00\x00"
    assert image_size(png) == (640, 480)
    assert image_size(b"GIF89a" + struct.pack("<HH", 30, 20)) == (30, 20)
    assert image_size(b"BM" + b"\x00" * 16 + struct.pack("<ii", 7, -9)) == (7, 9)
    jpeg = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 4) + b"\x00\x00" + b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 300, 200)
    assert image_size(jpeg) == (200, 300)
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (99).to_bytes(3, "little") + (49).to_bytes(3, "little")
    assert image_size(vp8x) == (100, 50)
    assert image_size(b"not an image") is None and image_size(b"\x89PNG\r\n\x1a\n") is None


def test_redact_url():
    assert redact_url("https://u:p@h.example:8443/m.gguf?token=abc&v=2&X-Amz-Signature=s") == \
        "https://h.example:8443/m.gguf?token=REDACTED&v=2&X-Amz-Signature=REDACTED"
    assert redact_url("https://h/m.gguf?rev=3") == "https://h/m.gguf?rev=3"


def test_parse_json_refuses_bad_text():
    assert parse_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001F600"}  # a surrogate pair is fine
    for raw, fragment in [(b'{"a": "\\ud800"}', "'a' holds a lone"), (b'{"\\udfff": 1}', "holds a lone"),
                          (b'\xff', "not valid UTF-8"), (b"[" * 200 + b"]" * 200, "deeper than")]:
        with pytest.raises(APIError, match=fragment):
            parse_json(raw)


def test_web_files():
    assert is_web_file("index.html") and is_web_file("sub/app.js") and is_web_file("sub")
    assert not is_web_file(".env") and not is_web_file(".git/index.html") and not is_web_file("key.pem")


def task(**params) -> Task:
    import asyncio

    return Task(kind="completion", prompt="x", params=SlotParams(**params), sink=TaskSink(asyncio.new_event_loop()))


def test_check_tasks_clamps_and_refuses():
    limits = Limits.from_settings(max_request_tasks=2, max_queued_tasks=3)
    t = task(n_predict=10**6, repeat_last_n=10**6, dry_penalty_last_n=10**6, json_schema={"type": "string", "maxLength": 5})
    check_tasks(limits, [t], n_ctx_slot=100)
    assert t.params.n_predict == 400 and t.params.repeat_last_n == 100 and t.params.dry_penalty_last_n == 100
    with pytest.raises(APIError, match="'dry_sequence_breakers' has 65 strings"):
        check_tasks(limits, [task(dry_sequence_breakers=["x"] * 65)], n_ctx_slot=100)
    assert t.params.json_schema is None and "root" in t.params.grammar  # converted once, before the scheduler
    with pytest.raises(APIError, match="--max-request-tasks"):
        check_tasks(limits, [task(), task(), task()], n_ctx_slot=100)
    with pytest.raises(QueueFull):
        check_tasks(limits, [task(), task()], n_ctx_slot=100, queued=2)
    capped = task(n_predict=-1)
    check_tasks(Limits.from_settings(n_predict=7), [capped], n_ctx_slot=100)
    assert capped.params.n_predict == 7
