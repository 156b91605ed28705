"""The chat endpoints' shared state: the engine and its chat formatter, owned by the app.

`create_app` makes one `ChatService` (`app.state.chat`) and registers `install` as an
`Engine.on_ready` hook: the template and the BOS/EOS texts are resolved once, on the
loader thread, before the scheduler starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .chat_templates import ChatTemplate, resolve


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


def load_formatter(model, chat_template: str) -> ChatFormatter:
    """The formatter of a loaded model (`chat_template`: the --chat-template flag)."""
    tmpl = resolve(chat_template, model.chat_template, model.meta("general.architecture"))
    special = lambda t: model.detokenize([t], special=True) if t >= 0 else ""  # noqa: E731
    return ChatFormatter(tmpl, special(model.bos), special(model.eos), model.add_bos)


def served_model(engine) -> str:
    """The name in API responses: the alias, else the model's file name."""
    return (engine.settings.aliases or [""])[0] or os.path.basename(engine.model_path or engine.settings.model)


class ChatService:
    """What the chat-style endpoints (OpenAI chat, Anthropic Messages, Responses) build on."""

    def __init__(self, engine):
        self.engine = engine
        self._formatter: ChatFormatter | None = None

    def install(self, engine) -> None:
        """`Engine.on_ready` hook: resolve the template and the BOS/EOS texts once."""
        self._formatter = load_formatter(engine.model, engine.settings.chat_template)

    @property
    def formatter(self) -> ChatFormatter:
        self.engine.require_ready()
        assert self._formatter is not None
        return self._formatter

    @property
    def settings(self):
        return self.engine.settings

    def served_model(self) -> str:
        return served_model(self.engine)
