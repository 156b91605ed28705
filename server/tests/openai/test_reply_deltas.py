"""Reply deltas and their three wire formats, without a model: engine events in, wire objects out.

`ReplyStream` turns task events into neutral deltas (reasoning split, tool calls parsed once);
the OpenAI chat, Anthropic Messages and Responses streams render the same deltas.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from kubellama_server import protocol as P
from kubellama_server.cli import parse_settings
from kubellama_server.engine.engine import Engine
from kubellama_server.engine.params import SlotParams
from kubellama_server.engine.task import CompletionResult, PartialResult, Task, TaskSink, Timings, TokenInfo, TokenProb
from kubellama_server.serving import anthropic, openai_chat, responses, tools
from kubellama_server.serving.chat_service import ChatService
from kubellama_server.serving.reply import ChatRun, ReplyDelta, ReplyStream, ToolCall, final_message

ASK = [{"role": "user", "content": "What is 2 + 2?"}]
CALC = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]
HERMES_SOURCE = "{{ messages }}<tool_call>"  # a template that renders <tool_call> blocks itself
THINKING = ["<think>\nab", "c</think>\n\nIt", " is 4."]  # a thinking reply in three engine steps


@pytest.fixture(scope="module")
def chat() -> ChatService:
    settings, _ = parse_settings(["-m", "/models/tiny.gguf", "--alias", "tiny-test"], environ={})
    return ChatService(Engine(settings))  # (not loaded: the renderers only need its name)


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def request(**body) -> P.ChatCompletionRequest:
    return P.parse_request(P.ChatCompletionRequest, {"messages": ASK, **body})


def run_of(*, reasoning: bool = False, thinking: bool = False, template: str | None = None, **body) -> ChatRun:
    req = request(**body)
    return ChatRun(req, tools.plan(req, template) if template is not None else None, reasoning, thinking)


def part(text: str, probs: list[TokenInfo] | None = None) -> PartialResult:
    return PartialResult(content=text, tokens=[], probs=probs or [], n_decoded=0)


def result(text: str, *, limit: bool = False, word: str = "", predicted: int = 5) -> CompletionResult:
    return CompletionResult(content=text, tokens=[], id_slot=0, prompt_tokens=[], prompt_text=None, tokens_predicted=predicted,
                            tokens_evaluated=10, tokens_cached=4, truncated=False, stopped_eos=not (limit or word),
                            stopped_limit=limit, stopped_word=bool(word), stopping_word=word, probs=[],
                            timings=Timings(), settings={})


def task(loop) -> Task:
    t = Task(kind="completion", prompt="p", params=SlotParams(), sink=TaskSink(loop))
    t.tokens, t.n_cached = [1] * 10, 4
    return t


def events(pieces: list[str], final: CompletionResult) -> list[tuple[str, object]]:
    return [("partial", part(p)) for p in pieces] + [("final", final)]


def wire(stream, evs, index: int = 0) -> list[dict]:
    out = [obj for kind, payload in evs for obj in stream.render(index, kind, payload)]
    return out + stream.tail()


def normalized(objs: list[dict]) -> list[dict]:
    """The objects with their random ids and times replaced (as the golden wire output)."""
    text = json.dumps(objs, separators=(",", ":"))
    text = re.sub(r'"(id|call_id|item_id)":"[^"]*"', r'"\1":"X"', text)
    return json.loads(re.sub(r'"(created|created_at)":\d+', r'"\1":0', text))


# -- deltas ----------------------------------------------------------------------


def test_a_plain_reply_is_one_delta_per_piece():
    rs = ReplyStream(run_of(), 1)
    first = rs.feed(0, "partial", part("Hel"))
    assert [(d.start, d.content) for d in first] == [(True, None), (False, "Hel")]
    assert [d.content for d in rs.feed(0, "partial", part("lo"))] == ["lo"]
    res = result("Hello")
    (finish,) = rs.feed(0, "final", res)
    assert finish.finish_reason == "stop" and finish.result is res and finish.content is None


def test_progress_is_the_start_delta():
    rs = ReplyStream(run_of(), 1)
    (d,) = rs.feed(0, "progress", {"total": 3})
    assert d.start and d.progress == {"total": 3}
    assert [x.start for x in rs.feed(0, "partial", part("a"))] == [False]  # started once


def test_thinking_is_split_into_reasoning_deltas():
    rs = ReplyStream(run_of(reasoning=True), 1)
    deltas = [d for kind, p in events(THINKING, result("".join(THINKING))) for d in rs.feed(0, kind, p)]
    assert [(d.reasoning, d.content) for d in deltas if not d.start and not d.finish_reason] == \
        [("ab", None), ("c", "It"), ("", " is 4.")]


@pytest.mark.parametrize("text, reasoning, thinking, template", [
    ("<think>\nI add.\n</think>\n\nIt is 4.", True, False, None),
    ("I add.</think>It is 4.", True, True, None),
    ("a long thought, cut off", True, True, None),
    ("no thinking here", True, False, None),
    ('Checking. <tool_call>\n{"name": "calc", "arguments": {"x": "2+2"}}\n</tool_call>', False, False, HERMES_SOURCE),
    ('Sure <tool_call>\n{"name": "calc", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "calc", '
     '"arguments": {"x": 2}}\n</tool_call>', False, False, HERMES_SOURCE),
    ("Plain <tool", False, False, HERMES_SOURCE),
    ('Need it.</think>Checking. <tool_call>\n{"name": "calc", "arguments": {}}\n</tool_call>', True, True, HERMES_SOURCE),
    ('{"response": "It is \\u00e9 4."}', False, False, "chatml"),
    ('{"tool_calls": [{"name": "calc", "arguments": {"x": "1"}}]}', False, False, "chatml"),
])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_deltas_add_up_to_the_whole_reply(text, reasoning, thinking, template, size):
    run = run_of(reasoning=reasoning, thinking=thinking, template=template, **({"tools": CALC} if template else {}))
    rs = ReplyStream(run, 1)
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    deltas = [d for kind, p in events(pieces, result(text)) for d in rs.feed(0, kind, p)]
    whole = final_message(run, text, "stop")
    assert "".join(d.reasoning for d in deltas) == (whole.reasoning or "")
    assert "".join(d.content or "" for d in deltas) == (whole.content or "")
    calls = [(c.name, c.arguments) for d in deltas for c in d.tool_calls or []]
    assert calls == [(c.name, c.arguments) for c in whole.tool_calls]
    assert deltas[-1].finish_reason == whole.finish_reason == ("tool_calls" if calls else "stop")
    assert sum(1 for d in deltas if d.start) == 1 and sum(1 for d in deltas if d.finish_reason) == 1


def test_held_back_token_probabilities_go_with_the_next_delta():
    rs = ReplyStream(run_of(template=HERMES_SOURCE, tools=CALC), 1)
    tok = lambda t: TokenInfo(id=0, text=t, prob=0.5, top=[])  # noqa: E731
    first = rs.feed(0, "partial", part("Hi <tool", [tok("Hi"), tok(" <tool")]))  # " <tool" may start a call
    assert [(d.content, len(d.probs or [])) for d in first[1:]] == [("Hi", 2)]
    assert rs.feed(0, "partial", part("_c", [tok("_c")])) == []  # "<tool_c" may still be a call: nothing to show
    deltas = rs.feed(0, "final", result("Hi <tool_c"))
    assert [(d.content, len(d.probs or [])) for d in deltas] == [(" <tool_c", 1), (None, 0)]


# -- OpenAI chat ------------------------------------------------------------------------


def test_openai_chunks_of_a_thinking_reply(chat, loop):
    run = run_of(reasoning=True, stream=True, stream_options={"include_usage": True})
    stream = openai_chat.ChatStream(chat, run, [task(loop)])
    chunks = normalized(wire(stream, events(THINKING, result("".join(THINKING)))))
    head = {"id": "X", "object": "chat.completion.chunk", "created": 0, "model": "tiny-test",
            "system_fingerprint": openai_chat.SYSTEM_FINGERPRINT}
    choice = lambda delta, finish=None: {**head, "choices": [  # noqa: E731
        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}}
    assert chunks == [
        choice({"role": "assistant", "content": None}),
        choice({"reasoning_content": "ab"}),
        choice({"content": "It", "reasoning_content": "c"}),
        choice({"content": " is 4."}),
        choice({}, "stop"),
        {**head, "choices": [], "usage": usage},
    ]


def test_openai_chunks_of_deltas(chat, loop):
    stream = openai_chat.ChatStream(chat, run_of(stream=True, logprobs=True, top_logprobs=1), [task(loop)])
    tok = TokenInfo(id=1, text="é", prob=1.0, top=[TokenProb(id=1, text="é", prob=1.0), TokenProb(id=2, text="e", prob=0.0)])
    call = ToolCall(0, "call_1", "calc", '{"x": 1}')
    assert stream.chunk(ReplyDelta(0, tool_calls=[call]))["choices"][0] == {
        "index": 0, "delta": {"tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "calc", "arguments": '{"x": 1}'}, "index": 0}]},
        "finish_reason": None, "logprobs": None}
    assert stream.chunk(ReplyDelta(0, content="é", probs=[tok]))["choices"][0]["logprobs"] == {"content": [
        {"token": "é", "logprob": 0.0, "bytes": [195, 169], "top_logprobs": [{"token": "é", "logprob": 0.0, "bytes": [195, 169]}]}]}
    assert stream.chunk(ReplyDelta(0, content="", probs=[]))["choices"][0]["logprobs"] == {"content": []}  # as before
    progress = stream.chunk(ReplyDelta(0, start=True, progress={"total": 2}))
    assert progress["prompt_progress"] == {"total": 2} and list(progress)[-1] == "prompt_progress"


def test_openai_response_renders_the_final_message(chat, loop):
    run = run_of(template=HERMES_SOURCE, tools=CALC)
    text = 'Checking. <tool_call>\n{"name": "calc", "arguments": {"x": 1}}\n</tool_call>'
    out = normalized([openai_chat.response(chat, run, [task(loop)], [result(text)])])[0]
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "X", "type": "function", "function": {"name": "calc", "arguments": '{"x": 1}'}}]},
        "finish_reason": "tool_calls", "logprobs": None}]


# -- Anthropic Messages -------------------------------------------------------------


def test_anthropic_events_of_a_thinking_reply(chat, loop):
    areq = anthropic.MessagesRequest("claude-x", True, run_of(reasoning=True, stream=True))
    stream = anthropic.MessagesStream(chat, areq, [task(loop)])
    evs = normalized(wire(stream, events(THINKING, result("".join(THINKING)))))
    usage = {"input_tokens": 6, "output_tokens": 0, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0}
    assert evs == [
        {"type": "message_start", "message": {"id": "X", "type": "message", "role": "assistant", "model": "claude-x",
                                               "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "ab"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "c"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "It"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " is 4."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {**usage, "output_tokens": 5}},
        {"type": "message_stop"},
    ]


def test_anthropic_events_of_deltas(chat, loop):
    areq = anthropic.MessagesRequest("m", True, run_of(stream=True))
    stream = anthropic.MessagesStream(chat, areq, [task(loop)])
    calls = normalized(stream.render_delta(ReplyDelta(0, tool_calls=[ToolCall(0, "call_1", "calc", '{"x": 1}')])))
    assert calls == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "X", "name": "calc", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"x": 1}'}},
    ]
    assert stream.render_delta(ReplyDelta(0, content="", probs=[])) == []  # a probability-only piece: nothing
    stop = stream.render_delta(ReplyDelta(0, finish_reason="stop", result=result("a STOP", word="STOP")))
    assert stop[0] == {"type": "content_block_stop", "index": 0}
    assert stop[1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}
    assert stop[2] == {"type": "message_stop"}


# -- Responses ------------------------------------------------------------------------


def test_responses_events_of_a_reply_cut_short(chat, loop):
    body = {"input": "What is 2 + 2?", "max_output_tokens": 5}
    rreq = responses.ResponsesRequest(body, "m", True, run_of(reasoning=True, stream=True))
    stream = responses.ResponsesStream(chat, rreq, [task(loop)])
    evs = wire(stream, events(THINKING, result("".join(THINKING), limit=True)))
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert [(e["type"], e.get("output_index"), e.get("delta")) for e in evs] == [
        ("response.created", None, None), ("response.in_progress", None, None),
        ("response.output_item.added", 0, None),
        ("response.reasoning_text.delta", 0, "ab"), ("response.reasoning_text.delta", 0, "c"),
        ("response.reasoning_text.done", 0, None), ("response.output_item.done", 0, None),
        ("response.output_item.added", 1, None), ("response.content_part.added", 1, None),
        ("response.output_text.delta", 1, "It"), ("response.output_text.delta", 1, " is 4."),
        ("response.output_text.done", 1, None), ("response.content_part.done", 1, None),
        ("response.output_item.done", 1, None), ("response.incomplete", None, None),
    ]
    final = evs[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [(o["type"], o.get("status")) for o in final["output"]] == [("reasoning", None), ("message", "incomplete")]
    assert final["output"][1]["content"][0]["text"] == "It is 4." and final["usage"]["output_tokens"] == 5


def test_responses_events_of_deltas(chat, loop):
    rreq = responses.ResponsesRequest({"input": "x"}, "m", True, run_of(stream=True))
    stream = responses.ResponsesStream(chat, rreq, [task(loop)])
    evs = stream.render_delta(ReplyDelta(0, tool_calls=[ToolCall(0, "call_1", "calc", '{"x": 1}')]))
    assert [e["type"] for e in evs] == ["response.output_item.added", "response.function_call_arguments.delta"]
    assert evs[0]["item"]["name"] == "calc" and evs[1]["delta"] == '{"x": 1}'
    done = stream.render_delta(ReplyDelta(0, finish_reason="tool_calls", result=result("")))
    assert [e["type"] for e in done] == ["response.function_call_arguments.done", "response.output_item.done",
                                         "response.completed"]
    assert done[-1]["response"]["output"][0]["arguments"] == '{"x": 1}'
