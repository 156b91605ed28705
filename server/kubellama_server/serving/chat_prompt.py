"""Chat messages -> the prompt text: content parts, images, tools, template variables, prefill.

`parse_and_render` is where a chat request (OpenAI's; Anthropic and Responses requests are
converted to it) becomes a `ChatRun` and the prompt its tasks evaluate.
"""

from __future__ import annotations

from typing import Any

from ..errors import invalid
from .. import protocol as P
from ..llama.mtmd import MEDIA_MARKER
from .chat_service import ChatService
from .chat_templates import TemplateError, parse_kwargs
from .media import data_url_image
from .reply import ChatRun
from . import reasoning, tools

PREFILL_SENTINEL = "\x00kubellama-prefill\x00"


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


def chat_prompt(chat: ChatService, run: ChatRun, images: list[bytes] | None = None, *, raw: bool = False) -> str:
    """The prompt of the run's `messages` (with its tools); `raw`: as rendered, BOS included.

    Also sets how the reply is read: whether reasoning is split out, and whether the reply
    starts inside a `<think>` block.
    """
    req = run.request
    messages = messages_for_template(req.messages, images)
    plan = run.tool_plan
    extra = template_kwargs(chat.settings, req)
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
        fmt = chat.formatter
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
    run.reasoning = (req.reasoning_format or chat.settings.reasoning_format) != "none"
    run.thinking = reasoning.prompt_opens_thinking(prompt) if prefill is None else \
        prefill.rfind(reasoning.OPEN) > prefill.rfind(reasoning.CLOSE)  # a prefill still thinking
    return prompt


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


def template_kwargs(settings, req: P.ChatCompletionRequest) -> dict[str, Any]:
    """Extra template variables: --chat-template-kwargs, then the request's `chat_template_kwargs`."""
    s = settings
    out: dict[str, Any] = {"enable_thinking": False} if s.reasoning_budget == 0 else {}
    if s.chat_template_kwargs:
        out.update(parse_kwargs(s.chat_template_kwargs, "--chat-template-kwargs"))  # checked at start-up
    if req.chat_template_kwargs:
        try:
            out.update(parse_kwargs(req.chat_template_kwargs, "'chat_template_kwargs'"))
        except ValueError as exc:
            raise invalid(str(exc)) from None
    return out


def parse_and_render(chat: ChatService, body: dict, *, raw: bool = False) -> tuple[ChatRun, str, list[bytes]]:
    """The chat run of `body`, its prompt (with its tools) and its images (chat_prompt's `raw`)."""
    req = P.parse_request(P.ChatCompletionRequest, body)
    run = ChatRun(req, tools.plan(req, chat.formatter.template.source))
    images: list[bytes] | None = [] if chat.engine.multimodal_enabled else None  # image parts: the media marker
    return run, chat_prompt(chat, run, images, raw=raw), images or []
