"""`spec.server.extraArgs` read by kubellama-server's own parser: what they set, and whether that is allowed.

The CRD's CEL rule only sees exact strings (`--host`, `--host=...`); argparse also takes attached
short values (`-m/models/other.gguf`), so the operator parses the list with the server's parser
(`kubellama_server.cli.build_parser`, without abbreviations, as llama.cpp) and refuses what sets a
setting the operator manages or one no LlamaServer may set. Flags added to the server are known
here at once. Importing `kubellama_server.cli` loads argparse and the settings dataclass only: no
llama.cpp and no web framework (the operator image installs neither).
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from typing import Any, NoReturn

from kubellama_server import cli as server_cli

#: Server flags the operator sets itself from the spec; `server.extraArgs` may not set them (in any spelling:
#: this module reads the list with the server's own parser, the CRD's CEL rule (api.server) catches `FLAG` and `FLAG=...`).
MANAGED_FLAGS = ["-m", "--model", "--host", "--port", "-a", "--alias", "--slot-save-path", "--slot-persist",
                 "--shutdown-timeout", "-spf", "--system-prompt-file", "-mu", "--model-url", "-hfr", "--hf-repo",
                 "-hff", "--hf-file", "-hf", "-mm", "--mmproj", "-mmu", "--mmproj-url", "--no-mmproj-offload",
                 "--no-mmproj", "--lora", "--lora-scaled"]
_KEY_FROM_SECRET = "API keys come from spec.apiKeySecretRef (a Secret), never from the spec itself"
_NO_TLS = ("the server pod does not terminate TLS (the key would have to be in the image); terminate it at "
           "an Ingress, a Gateway or a service mesh")
#: Server flags no LlamaServer may set, with the reason (the same checks as MANAGED_FLAGS).
FORBIDDEN_FLAGS = {
    "--api-key": _KEY_FROM_SECRET,
    "--api-key-file": _KEY_FROM_SECRET,
    "--path": "it would serve files of the container (the mounted API key among them) to anyone",
    "--ssl-key-file": _NO_TLS,
    "--ssl-cert-file": _NO_TLS,
}


class Refused(Exception):
    """The server's parser did not accept the extra arguments."""


class _Parser:
    """Hooks for the server's parser: errors raise instead of exiting, --help/--version print nothing."""

    @staticmethod
    def error(message: str) -> NoReturn:
        raise Refused(message)

    @staticmethod
    def exit(status: int = 0, message: str | None = None) -> NoReturn:
        raise Refused("--help and --version print and exit: the server would never start")

    @staticmethod
    def print_message(message: str, file: Any = None) -> None:
        pass


def parser() -> argparse.ArgumentParser:
    """kubellama-server's parser, without abbreviations (llama.cpp has none: `--hos` is not `--host`)."""
    p = server_cli.build_parser()
    p.allow_abbrev = False
    p.error = _Parser.error  # type: ignore[method-assign]
    p.exit = _Parser.exit  # type: ignore[method-assign]
    p._print_message = _Parser.print_message  # type: ignore[method-assign]
    return p


@lru_cache(maxsize=1)
def _dests() -> tuple[dict[str, str], dict[str, str]]:
    """(managed, forbidden): setting (argparse dest) -> the flag that names it in messages."""
    actions = parser()._option_string_actions
    managed = {actions[f].dest: f for f in reversed(MANAGED_FLAGS)}
    forbidden = {actions[f].dest: f for f in reversed(FORBIDDEN_FLAGS)}
    return managed, forbidden


def _flag_names(dest: str) -> str:
    names = [n for flag in server_cli.FLAGS if flag.dest == dest for n in flag.names]
    return "/".join(dict.fromkeys(names)) or dest


def parse(args: list[str]) -> dict[str, Any]:
    """The settings `args` set (argparse dest -> raw value); raises `Refused` with the parser's message."""
    ns = parser().parse_args(list(args))
    values = vars(ns)
    for flag in server_cli.FLAGS:  # the values the server converts after parsing (numbers, choices)
        if flag.dest in values and flag.kind not in ("bool", "list"):
            try:
                server_cli._convert(flag, values[flag.dest], f"argument {'/'.join(flag.names)}")
            except server_cli.UsageError as exc:
                raise Refused(str(exc)) from None
    return values


def problems(args: list[str]) -> list[str]:
    """Why `spec.server.extraArgs` cannot be passed to the server, as messages naming the flag; [] when fine."""
    if not args:
        return []
    try:
        given = parse(args)
    except Refused as exc:
        hint = " (flags are spelled in full; see `kubellama-server --help`)" if "unrecognized" in str(exc) else ""
        return [f"spec.server.extraArgs is not accepted by kubellama-server: {exc}{hint}"]
    managed, forbidden = _dests()
    out = []
    for dest in given:
        if dest in forbidden:
            out.append(f"spec.server.extraArgs may not set {_flag_names(dest)}: {FORBIDDEN_FLAGS[forbidden[dest]]}")
        elif dest in managed:
            out.append(f"spec.server.extraArgs may not set {_flag_names(dest)}: the operator manages it "
                       "(from the spec); remove it")
    return out
