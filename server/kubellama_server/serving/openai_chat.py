"""POST /v1/chat/completions: messages -> chat template -> `n` tasks -> OpenAI responses.

Also the shared pieces of the OpenAI endpoints: mapping OpenAI fields onto the
native `/completion` options, logprobs, usage and the served model's name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from ..engine.params import parse_slot_params
from ..engine.task import CompletionResult, PartialResult, Task, TaskSink, TokenInfo
from ..errors import invalid
from .. import __version__
from .. import protocol as P
from ..llama.mtmd import MEDIA_MARKER
from .chat_templates import ChatTemplate, TemplateError, parse_kwargs, resolve
from .limits import check_task_count
from .media import data_url_image
from . import reasoning, tools


# -- set-up (on the loader thread, before the scheduler starts) -----------------


@dataclass
class ChatFormatter:
    template: ChatTemplate
    bos_text: str
    eos_text: str
    add_bos: bool

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               extra: dict[str, Any] | None = None) -> str:
        return self.template.render(messages, bos_token=self.bos_text, eos_token=self.eos_text,
                                    add_generation_prompt=add_generation_prompt, extra=extra)

    def prompt(self, messages: list[dict[str, Any]], extra: dict[str, Any] | None = None,
               add_generation_prompt: bool = True) -> str:
        """The text handed to the scheduler: BOS is left to its BOS rule (never doubled)."""
        text = self.render(messages, add_generation_prompt, extra=extra)
        if self.add_bos and self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text):]
        return text


def install_formatter(engine) -> None:
    """`Engine.on_ready` hook: resolve the template and the BOS/EOS texts once."""
    model = engine.model
    tmpl = resolve(engine.settings.chat_template, model.chat_template, model.meta("general.architecture"))
    special = lambda t: model.detokenize([t], special=True) if t >= 0 else ""  # noqa: E731
    engine.chat = ChatFormatter(tmpl, special(model.bos), special(model.eos), model.add_bos)


def formatter(engine) -> ChatFormatter:
    engine.require_ready()
    return engine.chat


def served_model(engine) -> str:
    """The name in API responses: the alias, else the model's file name."""
    return (engine.settings.aliases or [""])[0] or os.path.basename(engine.model_path or engine.settings.model)


# -- request mapping -----------------------------------------------------------


def native_options(req: P._Sampling, body: dict, *, n_probs: int) -> dict[str, Any]:
    """The body as native options: OpenAI names mapped, llama.cpp extras kept.

    `cache_prompt` defaults to true here (unlike the native /completion, where the
    reference makes it false): chat prompts share long template and history prefixes,
    and OpenAI clients cannot send the option.
    """
    opts = dict(body)
    opts.setdefault("cache_prompt", True)
    for key in ("messages", "prompt", "n", "stream_options", "user", "response_format", "logprobs",
                "top_logprobs", "echo", "suffix", "model", "system_prompt", "tools", "tool_choice",
                "parallel_tool_calls", "reasoning_format", "chat_template_kwargs"):
        opts.pop(key, None)
    if getattr(req, "max_completion_tokens", None) is not None:
        opts["n_predict"] = req.max_completion_tokens
    elif req.max_tokens is not None:
        opts["n_predict"] = req.max_tokens
    opts.pop("max_tokens", None)
    opts.pop("max_completion_tokens", None)
    if n_probs:
        opts["n_probs"] = n_probs
    opts["stream"] = req.stream
    return opts


def response_schema(fmt: P.ResponseFormat | None) -> Any:
    """`response_format` -> the JSON schema to constrain output with (None: unconstrained)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        schema = fmt.schema_ if fmt.schema_ is not None else {}
    elif fmt.json_schema is None:
        raise invalid("'response_format' of type 'json_schema' needs a 'json_schema' object with a 'schema'")
    else:
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}
    check_enforceable(schema)
    return schema


# Keywords llama-cpp-python's schema-to-grammar converter ignores: output could break them.
UNENFORCEABLE = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                 "not", "if", "then", "else", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas")


def check_enforceable(schema: Any, path: str = "schema") -> None:
    """400 when the schema uses a keyword the grammar cannot enforce (the output must validate)."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_enforceable(item, f"{path}[{i}]")
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in UNENFORCEABLE and path.split(".")[-1] != "properties":
            raise invalid(
                f"'response_format' {path} uses '{key}', which the output grammar cannot enforce; "
                "remove it (or validate that constraint yourself)"
            )
        if key in ("const", "enum", "default", "examples"):
            continue
        check_enforceable(value, f"{path}.{key}")


def make_tasks(engine, req: P._Sampling, body: dict, prompts: list[Any], *, n_probs: int, json_schema: Any = None,
               allow_truncate: bool, images: list[bytes] | None = None, constraint: dict | None = None) -> list[Task]:
    """`n` tasks per prompt (choice index = prompt index * n + k), each for its own slot."""
    check_task_count(engine.settings, len(prompts) * req.n)
    opts = native_options(req, body, n_probs=n_probs)
    if json_schema is not None:
        opts["json_schema"] = json_schema
    if constraint:  # the tool format's grammar or schema
        if opts.get("grammar") or opts.get("json_schema") is not None:
            raise invalid("'grammar' and 'json_schema' cannot be combined with 'tools' here: the tool format "
                          "constrains the reply (use tool_choice \"none\", or leave them out)")
        opts.update(constraint)
    if req.n > 1 and opts.get("id_slot", -1) not in (-1, None):
        raise invalid("'id_slot' cannot be combined with 'n' > 1 (the choices run in parallel slots)")
    base = parse_slot_params(opts, engine.default_params, n_slots=engine.n_slots)
    tasks = []
    for prompt in prompts:
        for k in range(req.n):
            params = parse_slot_params(opts, engine.default_params, n_slots=engine.n_slots)
            if base.seed >= 0 and k:
                params.seed = (base.seed + k) % 2**32  # different but reproducible choices
            tasks.append(Task(kind="completion", prompt=prompt, params=params, sink=TaskSink(), allow_truncate=allow_truncate,
                              images=images or []))
    return tasks


# -- messages -------------------------------------------------------------------


def messages_for_template(messages: list[P.ChatMessage], images: list[bytes] | None = None) -> list[dict[str, Any]]:
    """Messages as the template wants them: each content array joined into one string.

    With `images` (a multimodal server), an image part becomes the media marker in the text
    and its bytes are appended to `images`; without, image parts are refused.
    """
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if content is None:
            if m.role != "assistant":
                raise invalid(f"'messages.{i}.content' is required for role '{m.role}'")
            content = ""
        elif isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type == "text":
                    if part.text is None:
                        raise invalid(f"'messages.{i}.content.{j}' of type 'text' needs a 'text' string")
                    texts.append(part.text)
                elif part.type == "image_url" and images is not None:
                    url = getattr(part, "image_url", None)
                    url = url.get("url") if isinstance(url, dict) else url
                    images.append(data_url_image(url, f"messages.{i}.content.{j}.image_url.url"))
                    texts.append(MEDIA_MARKER)
                elif part.type in ("image_url", "input_audio", "image"):
                    if images is not None:
                        raise invalid(f"'messages.{i}.content.{j}' is of type '{part.type}': only 'text' and 'image_url' parts are supported")
                    raise invalid(f"'messages.{i}.content.{j}' is of type '{part.type}': this server has no multimodal model (start it with --mmproj)")
                else:
                    raise invalid(f"'messages.{i}.content.{j}' has unknown type '{part.type}' (expected 'text')")
            content = "\n".join(texts)
        d = m.model_dump(exclude_none=True)
        d["role"] = "system" if m.role == "developer" else m.role
        d["content"] = content
        out.append(d)
    return out


def chat_prompt(engine, req: P.ChatCompletionRequest, images: list[bytes] | None = None, *, raw: bool = False) -> str:
    """The prompt of `messages` (with the tools of `req._tool_plan`); `raw`: as rendered, BOS included."""
    messages = messages_for_template(req.messages, images)
    plan = req._tool_plan
    extra = template_kwargs(engine, req)
    if plan is not None:
        messages, extra = plan.messages(messages), {**extra, **plan.template_kwargs()}
    last = messages[-1] if messages else {}
    add_prompt, continuation = generation_flags(req, last)
    prefill = last.get("content") if continuation and not last.get("tool_calls") else None
    if prefill is not None and not prefill.strip():
        prefill = None
    if prefill is not None:  # rendered with a sentinel in its place, so the cut never depends on the text
        messages = messages[:-1] + [{**last, "content": PREFILL_SENTINEL}]
    try:
        fmt = formatter(engine)
        render = fmt.render if raw else fmt.prompt
        prompt = render(messages, add_generation_prompt=prefill is None and (add_prompt or continuation), extra=extra)
    except TemplateError as exc:
        raise invalid(f"the chat template could not format these messages: {exc}") from None
    if prefill is not None:  # a final assistant message is continued: everything after it is cut
        at = prompt.find(PREFILL_SENTINEL)
        if at < 0:
            raise invalid("the chat template dropped the final assistant message, so it cannot be continued")
        prompt = prompt[:at] + prefill
    if images is not None and prompt.count(MEDIA_MARKER) != len(images):
        raise invalid(f"the prompt has {prompt.count(MEDIA_MARKER)} image places for {len(images)} images "
                      f"(a message text contains {MEDIA_MARKER!r}, or the chat template dropped a message)")
    req._reasoning = (req.reasoning_format or engine.settings.reasoning_format) != "none"
    req._thinking = reasoning.prompt_opens_thinking(prompt) if prefill is None else \
        prefill.rfind(reasoning.OPEN) > prefill.rfind(reasoning.CLOSE)  # a prefill still thinking
    return prompt


PREFILL_SENTINEL = "\x00kubellama-prefill\x00"
SYSTEM_FINGERPRINT = f"kubellama-{__version__}"


def generation_flags(req: P.ChatCompletionRequest, last: dict) -> tuple[bool, bool]:
    """(add_generation_prompt, continue the final message), as llama.cpp reads the body: a final
    assistant message is continued unless `continue_final_message` is false; asking for both is a 400."""
    extra = req.model_extra or {}
    add_prompt = extra.get("add_generation_prompt", True)
    cont = extra.get("continue_final_message")
    if not isinstance(add_prompt, bool) or (cont is not None and not isinstance(cont, bool)):
        raise invalid("'add_generation_prompt' and 'continue_final_message' must be booleans")
    if cont is None and last.get("role") == "assistant":
        return False, True  # llama.cpp's prefill_assistant
    if cont and add_prompt:
        raise invalid("Cannot set both add_generation_prompt and continue_final_message to true.")
    if cont and last.get("role") != "assistant":
        raise invalid("'continue_final_message' needs a final assistant message to continue")
    return add_prompt, bool(cont)


def template_kwargs(engine, req: P.ChatCompletionRequest) -> dict[str, Any]:
    """Extra template variables: --chat-template-kwargs, then the request's `chat_template_kwargs`."""
    s = engine.settings
    out: dict[str, Any] = {"enable_thinking": False} if s.reasoning_budget == 0 else {}
    if s.chat_template_kwargs:
        out.update(parse_kwargs(s.chat_template_kwargs, "--chat-template-kwargs"))  # checked at start-up
    if req.chat_template_kwargs:
        try:
            out.update(parse_kwargs(req.chat_template_kwargs, "'chat_template_kwargs'"))
        except ValueError as exc:
            raise invalid(str(exc)) from None
    return out


def parse_and_render(engine, body: dict, *, raw: bool = False) -> tuple[P.ChatCompletionRequest, str, list[bytes]]:
    """The chat request of `body`, its prompt (with its tools) and its images (chat_prompt's `raw`)."""
    req = P.parse_request(P.ChatCompletionRequest, body)
    req._tool_plan = tools.plan(req, formatter(engine).template.source)
    images: list[bytes] | None = [] if engine.multimodal_enabled else None  # image parts: the media marker
    return req, chat_prompt(engine, req, images, raw=raw), images or []


def build(engine, body: dict) -> tuple[P.ChatCompletionRequest, list[Task]]:
    req, prompt, images = parse_and_render(engine, body)
    n_probs = (req.top_logprobs or 1) if req.logprobs else 0
    if req.top_logprobs and not req.logprobs:
        raise invalid("'top_logprobs' needs 'logprobs': true")
    tasks = make_tasks(engine, req, body, [prompt], n_probs=n_probs, json_schema=response_schema(req.response_format),
                       allow_truncate=False, images=images,
                       constraint=req._tool_plan.constraint() if req._tool_plan else None)
    p = tasks[0].params if tasks else None
    if p is not None and (p.json_schema is not None or (p.grammar and reasoning.CLOSE not in p.grammar)):
        # constrained from the first token and unable to write </think>: the reply is the answer
        req._thinking = False
    return req, tasks


# -- responses ------------------------------------------------------------------


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def chat_logprobs(probs: list[TokenInfo], top: int) -> P.ChoiceLogprobs:
    return P.ChoiceLogprobs(content=[
        P.TokenLogprob(
            token=p.text, logprob=_logprob(p.prob), bytes=list(p.text.encode()),
            top_logprobs=[P.TopLogprob(token=t.text, logprob=_logprob(t.prob), bytes=list(t.text.encode())) for t in p.top[:top]],
        )
        for p in probs
    ])


def usage(tasks: list[Task], results: list[CompletionResult]) -> P.Usage:
    """Prompt tokens once per distinct prompt (system prompt excluded); completion tokens summed."""
    seen: dict[int, tuple[int, int]] = {}
    for t, r in zip(tasks, results):
        seen[id(t.prompt)] = (r.tokens_evaluated - t.n_system, max(0, r.tokens_cached - t.n_system))
    prompt = sum(n for n, _ in seen.values())
    cached = sum(c for _, c in seen.values())
    completion = sum(r.tokens_predicted for r in results)
    return P.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=P.PromptTokensDetails(cached_tokens=cached))


def reply(req: P.ChatCompletionRequest, text: str, finish: str) -> tuple[str | None, str | None, list[tools.ParsedCall], str]:
    """(reasoning, content, tool calls, finish_reason) of one choice's whole reply."""
    thoughts, content = reasoning.split(text, req._thinking) if req._reasoning else (None, text)
    if req._tool_plan is None:
        return thoughts, content, [], finish
    content, calls = req._tool_plan.parse(content)
    return thoughts, content, calls, "tool_calls" if calls else finish


def response(engine, req: P.ChatCompletionRequest, tasks: list[Task], results: list[CompletionResult]) -> dict:
    choices = []
    for i, res in enumerate(results):
        thoughts, content, calls, finish = reply(req, res.content, res.finish_reason)
        choices.append(P.ChatChoice(
            index=i,
            message=P.AssistantMessage(content=content, reasoning_content=thoughts,
                                       tool_calls=[c.openai() for c in calls] or None),
            finish_reason=finish,
            logprobs=chat_logprobs(res.probs, req.top_logprobs or 0) if req.logprobs else None,
        ))
    out = P.dump(P.ChatCompletion(id=P.new_id("chatcmpl"), created=P.now(), model=served_model(engine),
                                  system_fingerprint=SYSTEM_FINGERPRINT, choices=choices, usage=usage(tasks, results)))
    for choice in out["choices"]:  # as OpenAI: these keys only when there is something in them
        for key in ("tool_calls", "reasoning_content"):
            if choice["message"].get(key) is None:
                choice["message"].pop(key, None)
    return out


class ChatStream:
    """Renders the scheduler events of `n` tasks as `chat.completion.chunk` objects.

    The reply text of each choice goes through its reasoning splitter (`<think>` text becomes
    `reasoning_content`) and, with tools, content before a possible call is streamed while
    the call itself is sent whole when the reply ends.
    """

    def __init__(self, engine, req: P.ChatCompletionRequest, tasks: list[Task]):
        self.req = req
        self.tasks = tasks
        self.id = P.new_id("chatcmpl")
        self.created = P.now()
        self.model = served_model(engine)
        self.started: set[int] = set()
        self.results: dict[int, CompletionResult] = {}
        self.splitters = {i: reasoning.Splitter(req._thinking) for i in range(len(tasks))} if req._reasoning else {}
        # tools: each choice's reply so far (after the reasoning), and the content already sent
        self.text: dict[int, str] = {}
        self.shown: dict[int, str] = {}
        self.probs: dict[int, list[TokenInfo]] = {}  # not yet sent (logprobs)

    def _chunk(self, choices: list[P.ChatChunkChoice], usage: P.Usage | None = None) -> dict:
        chunk = P.ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage,
                                      system_fingerprint=SYSTEM_FINGERPRINT)
        d = P.dump(chunk)
        if usage is None:
            d.pop("usage")
        for choice in d["choices"]:  # deltas carry only what changed, as OpenAI's
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return d

    def _role_chunk(self, index: int) -> dict:
        first = self._chunk([P.ChatChunkChoice(index=index, delta=P.ChatDelta(role="assistant"))])
        first["choices"][0]["delta"]["content"] = None  # as llama.cpp: the role first, content null
        return first

    def render(self, index: int, kind: str, payload: Any) -> list[dict]:
        out = []
        if kind == "progress":  # return_progress: the role delta with the prompt's progress (llama.cpp)
            self.started.add(index)
            return [{**self._role_chunk(index), "prompt_progress": payload}]
        if index not in self.started:
            self.started.add(index)
            out.append(self._role_chunk(index))
        splitter = self.splitters.get(index)
        if kind == "partial":
            part: PartialResult = payload
            if self.req._tool_plan is None and (splitter is None or splitter.phase == "content"):
                # the plain stream (also once the thinking is over): every piece as it comes
                if part.content or part.probs:
                    lp = chat_logprobs(part.probs, self.req.top_logprobs or 0) if self.req.logprobs else None
                    out.append(self._chunk([P.ChatChunkChoice(index=index, delta=P.ChatDelta(content=part.content), logprobs=lp)]))
                return out
            self.probs.setdefault(index, []).extend(part.probs)
            thoughts, content = splitter.push(part.content) if splitter else ("", part.content)
            out += self._deltas(index, thoughts, content)
        elif kind == "final":
            res: CompletionResult = payload
            self.results[index] = res
            thoughts, content = splitter.finish() if splitter else ("", "")
            out += self._deltas(index, thoughts, content, final=res)
        return out

    def _deltas(self, index: int, thoughts: str, content: str, final: CompletionResult | None = None) -> list[dict]:
        plan = self.req._tool_plan
        calls: list[tools.ParsedCall] = []
        if plan is None:
            new = content
        elif final is None:  # content that cannot turn out to be a tool call
            shown = self.shown.get(index, "")
            text = self.text[index] = self.text.get(index, "") + content
            visible = plan.visible(text)
            new = visible[len(shown):] if len(visible) > len(shown) and visible.startswith(shown) else ""
            self.shown[index] = shown + new
        else:
            text = self.text[index] = self.text.get(index, "") + content
            whole, calls = plan.parse(text)
            new = plan.rest(text, whole, calls, self.shown.get(index, ""))
        out = []
        if thoughts or new:
            delta = P.ChatDelta(reasoning_content=thoughts or None, content=new or None)
            out.append(self._chunk([P.ChatChunkChoice(index=index, delta=delta, logprobs=self._held_probs(index))]))
        if final is not None:
            if calls:
                deltas = [c.openai(k) for k, c in enumerate(calls)]
                out.append(self._chunk([P.ChatChunkChoice(index=index, delta=P.ChatDelta(tool_calls=deltas),
                                                          logprobs=self._held_probs(index))]))
            finish = "tool_calls" if calls else final.finish_reason
            out.append(self._chunk([P.ChatChunkChoice(index=index, delta=P.ChatDelta(), finish_reason=finish,
                                                      logprobs=self._held_probs(index))]))  # tokens of held-back tags
        return out

    def _held_probs(self, index: int) -> P.ChoiceLogprobs | None:
        """The logprobs of the tokens received since the last chunk of this choice (tools mode)."""
        probs, self.probs[index] = self.probs.get(index, []), []
        return chat_logprobs(probs, self.req.top_logprobs or 0) if self.req.logprobs and probs else None

    def tail(self) -> list[dict]:
        opts = self.req.stream_options
        if not (opts and opts.include_usage):
            return []
        results = [self.results[i] for i in range(len(self.tasks))]
        return [self._chunk([], usage(self.tasks, results))]


Stream = ChatStream  # the streaming renderer of this endpoint family (http.routes_openai)
