"""Chat templates: the model's Jinja template (GGUF `tokenizer.chat_template`) or a built-in one.

Templates render in a sandboxed, immutable Jinja2 environment with `messages`,
`bos_token`, `eos_token`, `add_generation_prompt` and `raise_exception`, as the
Hugging Face / llama.cpp convention. Resolution order: `--chat-template` (a
built-in name or a template string), the model's own template, a built-in one
for the model's architecture (Gemma GGUFs often ship without one), ChatML.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ALTERNATE = (
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
)

BUILTIN: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}" + _ALTERNATE +
        "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}" + _ALTERNATE +
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}" + _ALTERNATE +
        "{% if message['role'] == 'user' %}{{ '[INST] ' + (system_message if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    "phi3": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

# Architectures whose GGUFs may lack a template but need a specific format.
_ARCH_DEFAULTS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}

SAMPLE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "How are you?"},
]


class TemplateError(ValueError):
    """The template does not compile or failed to render the conversation."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = lambda v, indent=None, **_: __import__("json").dumps(v, indent=indent, ensure_ascii=False)
    return env


@dataclass
class ChatTemplate:
    source: str
    name: str  # a built-in name, "model", or "custom"

    def __post_init__(self) -> None:
        try:
            self._template = _environment().from_string(self.source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template does not compile: {exc}") from None

    def render(self, messages: list[dict[str, Any]], *, bos_token: str, eos_token: str, add_generation_prompt: bool = True,
               extra: dict[str, Any] | None = None) -> str:
        """`extra`: more template variables (tools, chat_template_kwargs); a dict, so any name is safe."""
        context = {**(extra or {}), "messages": messages, "bos_token": bos_token, "eos_token": eos_token,
                   "add_generation_prompt": add_generation_prompt}
        try:
            return self._template.render(context)
        except TemplateError:
            raise
        except jinja2.exceptions.UndefinedError as exc:
            raise TemplateError(f"the chat template uses an undefined value: {exc}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"the chat template did something unsafe: {exc}") from None
        except Exception as exc:  # noqa: BLE001 -- any template bug is the template's problem
            raise TemplateError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from None


# variables the server sets itself; template kwargs may not replace them
RESERVED = ("messages", "bos_token", "eos_token", "add_generation_prompt", "tools", "raise_exception", "strftime_now")


def parse_kwargs(value: Any, where: str) -> dict[str, Any]:
    """Extra template variables (`--chat-template-kwargs` JSON, or a request's object)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object of template variables")
    taken = [k for k in value if k in RESERVED]
    if taken:
        raise ValueError(f"{where} may not set {', '.join(taken)}: the server sets it")
    return value


def from_cli(value: str) -> ChatTemplate:
    """`--chat-template`: a built-in name or a Jinja template string. Raises TemplateError."""
    name = value.strip()
    if name in BUILTIN:
        return ChatTemplate(BUILTIN[name], name)
    if "{{" not in value and "{%" not in value:
        raise TemplateError(
            f"--chat-template {value!r} is neither a built-in template ({', '.join(sorted(BUILTIN))}) nor a Jinja template"
        )
    tmpl = ChatTemplate(value, "custom")
    tmpl.render(SAMPLE_MESSAGES, bos_token="<s>", eos_token="</s>")  # fail at start-up, not per request
    return tmpl


def resolve(cli_value: str, model_template: str | None, architecture: str | None) -> ChatTemplate:
    """The template the chat endpoints use (see the module docstring for the order)."""
    if cli_value:
        return from_cli(cli_value)
    if model_template:
        try:
            return ChatTemplate(model_template, "model")
        except TemplateError:
            pass  # a broken template in the model file: fall back like the reference
    arch_default = _ARCH_DEFAULTS.get((architecture or "").lower())
    if arch_default:
        return ChatTemplate(BUILTIN[arch_default], arch_default)
    return ChatTemplate(BUILTIN["chatml"], "chatml")
