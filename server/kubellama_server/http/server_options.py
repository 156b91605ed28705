"""uvicorn's settings for this server: connection limit, header and keep-alive timeouts.

uvicorn bounds the header size (h11/httptools) but not the time a client takes to send
its headers: a connection that dribbles a request line forever would be held open. The
protocol classes here close a connection that has not sent a complete request head
within `--header-timeout` seconds of connecting or of its previous response.
"""

from __future__ import annotations

from typing import Any

from ..settings import ServerSettings


class _HeaderDeadline:
    header_timeout = 30.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        waiting_for = self.cycle  # the next request replaces it once its head is in
        self.loop.call_later(self.header_timeout, self._header_deadline, waiting_for)

    def _header_deadline(self, waiting_for) -> None:
        if self.cycle is waiting_for and not self.transport.is_closing():
            if waiting_for is None or waiting_for.response_complete:
                self.transport.close()


def protocol_class(header_timeout: float) -> type:
    """The HTTP protocol uvicorn would pick ("auto": httptools, else h11), with the header deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - without httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type("HeaderDeadlineProtocol", (_HeaderDeadline, base), {"header_timeout": header_timeout})


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config."""
    return {
        "http": protocol_class(settings.header_timeout),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": max(1, int(min(settings.timeout, settings.header_timeout))),
        "timeout_graceful_shutdown": int(settings.shutdown_timeout),
    }
