"""Start the server: logging, the app, uvicorn (SSL optional), graceful shutdown."""

from __future__ import annotations

import logging
import sys

import uvicorn

from .http import listen
from .http.app import create_app
from .http.server_options import uvicorn_options
from .observability.request_log import install_formatter
from .settings import ServerSettings

log = logging.getLogger("kubellama")


def configure_logging(settings: ServerSettings) -> None:
    level = logging.DEBUG if settings.verbose else logging.INFO
    if settings.log_disable:
        level = logging.CRITICAL + 1
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_formatter(settings.log_format)  # --log-format json: one JSON object per line


def serve(settings: ServerSettings, warnings: list[str] | None = None) -> None:
    configure_logging(settings)
    if warnings:
        log.warning("accepted but not implemented yet (ignored): %s", ", ".join(warnings))
    app = create_app(settings)
    log.info("listening on http%s://%s:%d", "s" if settings.ssl_cert_file else "", settings.host, settings.port)
    options = dict(
        log_level="warning",
        access_log=False,
        ssl_keyfile=settings.ssl_key_file or None,
        ssl_certfile=settings.ssl_cert_file or None,
        **uvicorn_options(settings),  # connection limit, header and keep-alive timeouts
    )
    if listen.needs_sockets(settings.host):  # several addresses or a UNIX socket (llama.cpp's --host forms)
        sockets = listen.bind(settings.host, settings.port)
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=sockets)
        return
    uvicorn.run(app, host=settings.host, port=settings.port, **options)
