"""The FastAPI application: engine on app.state, error handlers, routers."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..engine import persistence
from ..engine.engine import Engine
from ..model_source import resolve_mmproj_path, resolve_model_path
from ..observability import install_observability
from ..settings import ServerSettings
from . import auth, cors, static
from ..serving import system_prompt
from ..serving.chat_service import ChatService
from .errors import install_error_handlers
from .request_limits import BodyLimitMiddleware
from .routes_embeddings import router as embeddings_router
from .routes_rerank import router as rerank_router
from .routes_anthropic import router as anthropic_router
from .routes_infill import router as infill_router
from .routes_openai import router as openai_router
from .routes_health import router as health_router
from .routes_native import router as native_router
from .routes_metrics import router as metrics_router
from .routes_slots import router as slots_router


def create_app(settings: ServerSettings, engine: Engine | None = None, *, load: bool = True) -> FastAPI:
    """Build the app; with `load`, the model loads in the background once the app starts."""
    engine = engine or Engine(settings)
    if engine.resolve_model is None:
        engine.resolve_model = resolve_model_path
    if engine.resolve_mmproj is None:
        engine.resolve_mmproj = resolve_mmproj_path

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load and not engine.loaded.is_set() and engine.state.name == "LOADING":
            engine.start_loading()
        yield
        engine.close()

    app = FastAPI(title="kubellama-server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.settings = settings
    app.state.chat = chat = ChatService(engine)  # the chat endpoints' formatter, set once the model loads
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(native_router)
    app.include_router(slots_router)
    app.include_router(metrics_router)
    app.include_router(openai_router)
    app.include_router(embeddings_router)
    app.include_router(rerank_router)
    app.include_router(anthropic_router)
    app.include_router(infill_router)
    files = static.install(app, settings.path or None,
                           private=[settings.api_key_file, settings.ssl_key_file, settings.ssl_cert_file])  # last: answers GET paths no route claims
    engine.on_ready.append(chat.install)
    # -spf: the server's system prompt (shown by /props), given to the scheduler before it starts
    app.state.system_prompt = sp = system_prompt.load_file(settings.system_prompt_file) \
        if settings.system_prompt_file else system_prompt.SystemPrompt()
    if settings.system_prompt_file:
        engine.on_ready.append(lambda e: system_prompt.install(e, sp))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout=settings.timeout)
    app.add_middleware(auth.APIKeyMiddleware, keys=auth.load_keys(settings), is_public=files.is_public,
                       public_paths=auth.public_paths(settings))
    app.add_middleware(cors.CORSMiddleware, origins=settings.cors_origins, methods=settings.cors_methods,
                       headers=settings.cors_headers, credentials=settings.cors_credentials)  # outermost: 401s get CORS too
    # wraps even CORS/auth (observes only): 401s are counted, logged and traced too
    metrics = install_observability(app, settings, engine)  # /metrics, tracing, request logs
    persistence.install(engine, metrics.count_slot_action)  # --slot-persist warm restarts
    return app
