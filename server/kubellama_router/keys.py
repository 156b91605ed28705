"""What the strategies route on, read from a request: the prompt text, KubeAI's key, a session.

Pure functions of (path, headers, parsed JSON body); nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
PROMPT_PATHS = frozenset({"/v1/completions", "/completions", "/completion", "/infill", "/v1/infill"})
RESPONSES_PATHS = frozenset({"/v1/responses", "/responses"})
EMBED_PATHS = frozenset({"/v1/embeddings", "/embeddings", "/embedding", "/v1/rerank", "/rerank", "/reranking"})


@dataclass(frozen=True)
class RouteKeys:
    prompt: str = ""  # the conversation or prompt as text, in order (for prefix matching)
    first_user: str = ""  # the first user message's text (KubeAI's PrefixHash key)
    session: str = ""  # a session id (header or the OpenAI `user` field)


def _text(content: Any) -> str:
    """Text of a message content: a string, or the text of its parts (images etc. by type)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    out.append(t)
                elif part.get("type"):
                    out.append(f"<{part['type']}>")
        return "".join(out)
    return "" if content is None else str(content)


def _messages_text(messages: list, system: Any = None) -> tuple[str, str]:
    parts = [f"<|system|>{_text(system)}\n"] if system else []
    first_user = None
    for m in messages:
        if not isinstance(m, dict):
            continue
        role, text = str(m.get("role", "")), _text(m.get("content"))
        if role == "user" and first_user is None:
            first_user = text
        parts.append(f"<|{role}|>{text}\n")
    return "".join(parts), first_user or ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        head = prompt[0]
        if isinstance(head, str):
            return head
        if isinstance(head, int):  # one prompt of token ids
            return " ".join(str(t) for t in prompt if isinstance(t, int))
        if isinstance(head, list):
            return " ".join(str(t) for t in head if isinstance(t, int))
        if isinstance(head, dict):  # multimodal prompt object
            return _prompt_text(head.get("prompt_string", ""))
    if isinstance(prompt, dict):
        return _prompt_text(prompt.get("prompt_string", ""))
    return ""


def extract(path: str, headers: dict[str, str], body: Any, session_header: str = "x-session-id") -> RouteKeys:
    """The routing keys of one request (`headers` with lower-case names)."""
    session = headers.get(session_header.lower(), "").strip()
    if not isinstance(body, dict):
        return RouteKeys(session=session)
    if not session:
        user = body.get("user")
        meta = body.get("metadata")
        if isinstance(user, str):
            session = user
        elif isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
            session = meta["user_id"]
    prompt, first_user = "", ""
    if path in CHAT_PATHS or path in ANTHROPIC_PATHS:
        messages = body.get("messages")
        if isinstance(messages, list):
            prompt, first_user = _messages_text(messages, body.get("system"))
    elif path in RESPONSES_PATHS:
        inp = body.get("input")
        if isinstance(inp, list):
            prompt, first_user = _messages_text(inp, body.get("instructions"))
        elif isinstance(inp, str):
            first_user = inp
            prompt = (f"<|system|>{body['instructions']}\n" if isinstance(body.get("instructions"), str) else "") \
                + f"<|user|>{inp}\n"
    elif path in PROMPT_PATHS:
        text = _prompt_text(body.get("prompt"))
        if not text and isinstance(body.get("input_prefix"), str):  # /infill
            text = body["input_prefix"]
        prompt = first_user = text
    elif path in EMBED_PATHS:
        prompt = first_user = _prompt_text(body.get("input", body.get("content", body.get("query"))))
    return RouteKeys(prompt=prompt, first_user=first_user, session=session[:256])
