"""Thinking models' reasoning (`<think>...</think>`) as `reasoning_content`, apart from the answer.

llama.cpp's `--reasoning-format deepseek` (its default, `auto`): a reply that starts with
`<think>`, or whose prompt already opened one (DeepSeek-R1 and Qwen3 templates end the prompt
with `<think>`), has its thoughts moved to `message.reasoning_content`; `none` leaves the
reply as it is. A reply cut off while still thinking is all reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPEN, CLOSE = "<think>", "</think>"
FORMATS = ("auto", "deepseek", "none")


def prompt_opens_thinking(prompt: str) -> bool:
    return prompt.rstrip().endswith(OPEN)


def split(text: str, opened: bool) -> tuple[str | None, str]:
    """(reasoning, content) of a finished reply."""
    body = text
    if not opened:
        stripped = text.lstrip()
        if not stripped.startswith(OPEN):
            return None, text
        body = stripped[len(OPEN):]
    end = body.find(CLOSE)
    if end < 0:
        return body.strip(), ""
    return body[:end].strip(), body[end + len(CLOSE):].lstrip()


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


@dataclass
class Splitter:
    """Splits a streamed reply into reasoning and content deltas, holding back a tag in progress."""

    opened: bool
    text: str = ""
    sent: int = 0  # characters of `text` already handed out
    thought: bool = False  # some reasoning went out
    phase: str = field(init=False)  # start (may open <think>) | reasoning | after (</think> seen) | content

    def __post_init__(self) -> None:
        self.phase = "reasoning" if self.opened else "start"

    def push(self, piece: str) -> tuple[str, str]:
        """(reasoning delta, content delta) now safe to send."""
        if self.phase == "content":  # the common case once thinking is over (or never began)
            return "", piece
        self.text += piece
        reasoning = content = ""
        while True:
            rest = self.text[self.sent:]
            if self.phase == "start":
                stripped = rest.lstrip()
                if stripped.startswith(OPEN):
                    self.sent += len(rest) - len(stripped) + len(OPEN)
                    self.phase = "reasoning"
                    continue
                if OPEN.startswith(stripped):  # nothing yet, or a <think> in progress
                    return reasoning, content
                self.phase = "content"
            elif self.phase == "reasoning":
                if not self.thought:  # the thoughts start after the whitespace that follows <think>
                    stripped = rest.lstrip()
                    self.sent += len(rest) - len(stripped)
                    rest = stripped
                end = rest.find(CLOSE)
                if end >= 0:
                    reasoning += rest[:end].rstrip()
                    self.sent += end + len(CLOSE)
                    self.phase = "after"
                    continue
                safe = len(rest) - _partial_tag(rest, CLOSE)
                while safe > 0 and rest[safe - 1].isspace():  # trailing whitespace waits: it may end the thoughts
                    safe -= 1
                self.sent += safe
                self.thought = self.thought or safe > 0
                return reasoning + rest[:safe], content
            elif self.phase == "after":  # the answer starts after the whitespace that follows </think>
                stripped = rest.lstrip()
                self.sent += len(rest) - len(stripped)
                if not stripped:
                    return reasoning, content
                self.phase = "content"
            else:
                self.sent += len(rest)
                return reasoning, content + rest

    def finish(self) -> tuple[str, str]:
        """What was held back when the reply ends (an unfinished tag is text after all)."""
        rest = self.text[self.sent:]
        self.sent = len(self.text)
        if self.phase == "reasoning":
            return (rest.rstrip() if self.thought else rest.strip()), ""
        return "", rest if self.phase in ("start", "content") else rest.lstrip()
