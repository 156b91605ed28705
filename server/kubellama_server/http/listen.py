"""`--host` as llama.cpp takes it: addresses, comma-separated, or UNIX socket paths ending in .sock."""

from __future__ import annotations

import os
import socket


def hosts(value: str) -> list[str]:
    """The addresses of `--host` (ValueError when one is empty)."""
    parts = [h.strip() for h in value.split(",")]
    if not parts or any(not h for h in parts):
        raise ValueError(f"--host {value!r}: give addresses separated by commas, without empty ones")
    return parts


def needs_sockets(value: str) -> bool:
    """Whether uvicorn's own single-address binding cannot serve `--host` (several, or a UNIX socket)."""
    parts = hosts(value)
    return len(parts) > 1 or parts[0].endswith(".sock")


def bind(value: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address; with several TCP addresses, `::` is IPv6 only (llama.cpp)."""
    out: list[socket.socket] = []
    try:
        for host in hosts(value):
            if host.endswith(".sock"):
                if os.path.exists(host):
                    os.unlink(host)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(host)
            else:
                addr = host.strip("[]")
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr, port))
            sock.listen(2048)
            sock.set_inheritable(True)
            out.append(sock)
    except OSError:
        for s in out:
            s.close()
        raise
    return out
