"""The engine facade the HTTP layer talks to: model loading, task submission, slot views.

Loading runs in a background thread so `/health` can answer 503 meanwhile; after
that, only the scheduler thread calls llama.cpp on the context (KV cache, decode);
tokenizing reads the vocabulary only and runs on the requests' worker threads.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import llama_cpp as lc

from ..errors import APIError
from ..llama.backend import init_backend
from ..llama.context import ContextParams, LlamaContext
from ..llama.model import LlamaModel, ModelLoadParams
from ..llama.mtmd import Multimodal
from ..settings import ServerSettings
from .params import SlotParams
from .prepare import as_api_error
from .sampler_names import default_params
from .scheduler import STACK_BYTES, Scheduler
from .self_extend import SelfExtend
from .stats import EngineStats
from .task import Task
from .workers import Workers

log = logging.getLogger("kubellama.engine")

# --pooling (llama.cpp's names) -> llama_pooling_type
POOLING = {
    "none": lc.LLAMA_POOLING_TYPE_NONE,
    "mean": lc.LLAMA_POOLING_TYPE_MEAN,
    "cls": lc.LLAMA_POOLING_TYPE_CLS,
    "last": lc.LLAMA_POOLING_TYPE_LAST,
    "rank": lc.LLAMA_POOLING_TYPE_RANK,
}


# threads that prepare requests (tokenize, build sampler chains) beside the scheduler thread
PREPARE_THREADS = max(2, min(8, os.cpu_count() or 2))


class EngineState(str, enum.Enum):
    LOADING = "loading model"
    READY = "ok"
    ERROR = "error"


class Engine:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.state = EngineState.LOADING
        self.error: str | None = None
        self.model: LlamaModel | None = None
        self.ctx: LlamaContext | None = None
        self.scheduler: Scheduler | None = None
        self.workers: Workers | None = None  # prepare and tokenize requests (big stacks: grammars)
        self.multimodal: Multimodal | None = None
        self.stats = EngineStats()
        self.default_params = default_params(settings)  # the sampling flags
        self.model_path = settings.model
        self.loaded = threading.Event()
        self.t_loaded = 0.0
        self.resolve_model: Callable[[ServerSettings], str] | None = None  # e.g. a downloader
        self.resolve_mmproj: Callable[[ServerSettings], str] | None = None  # the projector's, for -mmu
        self.on_ready: list[Callable[["Engine"], None]] = []
        self.on_shutdown: list[Callable[["Engine"], None]] = []  # before the scheduler stops (warm restarts)
        # called with every final result by whoever reads it (the HTTP layer), in that
        # request's asyncio context: request logs, tracing
        self.on_result: list[Callable[[Any], None]] = []

    # -- lifecycle ----------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        t = threading.Thread(target=self._load_safely, name="kubellama-loader", daemon=True)
        t.start()
        return t

    def _load_safely(self) -> None:
        try:
            self.load()
        except Exception as exc:  # reported by /health (500) and the log
            self.error = str(exc)
            self.state = EngineState.ERROR
            log.error("model load failed: %s", exc)
        finally:
            self.loaded.set()

    def load(self) -> None:
        s = self.settings
        t0 = time.perf_counter()
        if self.resolve_model is not None:
            self.model_path = self.resolve_model(s)
        init_backend(verbose=s.verbose, numa=s.numa or None)
        self.model = LlamaModel(
            ModelLoadParams(
                path=self.model_path,
                n_gpu_layers=s.n_gpu_layers,
                main_gpu=s.main_gpu,
                tensor_split=tuple(s.tensor_split),
                use_mmap=not s.no_mmap,
                use_mlock=s.mlock,
            )
        )
        n_ctx = s.ctx_size or self.model.n_ctx_train
        self.ctx = LlamaContext(
            self.model,
            ContextParams(
                n_ctx=n_ctx,
                n_batch=s.batch_size,
                n_ubatch=s.ubatch_size,
                n_seq_max=s.parallel,
                n_threads=s.n_threads,
                n_threads_batch=s.n_threads_batch,
                embeddings=False,
                pooling_type=POOLING[s.pooling_name] if s.embeddings_enabled else lc.LLAMA_POOLING_TYPE_UNSPECIFIED,
                kv_unified=s.kv_unified,
                flash_attn=s.flash_attn,
            ),
        )
        self.ctx.embeddings = s.embeddings_enabled  # embedding batches switch llama_set_embeddings on
        if self.reranking:
            self._check_reranker()
        self.ctx.apply_loras(s.lora + [path for path, _ in s.lora_scaled])
        if s.lora_scaled:  # default scales: the --lora adapters at 1.0, then the --lora-scaled ones
            self.ctx.set_lora_scales([1.0] * len(s.lora) + [scale for _, scale in s.lora_scaled])
        self_extend = SelfExtend.from_settings(s.grp_attn_n, s.grp_attn_w)
        if self_extend and not self.ctx.can_shift:
            raise RuntimeError(
                "--grp-attn-n (self-extend) needs a KV cache whose positions can be shifted, and this "
                "model's cannot; start the server without --grp-attn-n")
        if self.multimodal_enabled:  # (-hf may have found a projector while resolving the model)
            try:
                path = self.resolve_mmproj(s) if self.resolve_mmproj is not None else s.mmproj
                self.multimodal = self._load_projector(path)
            except RuntimeError as exc:
                if not s.hf_mmproj_file or s.mmproj or s.mmproj_url:
                    raise
                # a projector -hf found by itself: the text model still works
                log.warning("the repository's projector %s cannot be used (%s); serving text only "
                            "(--no-mmproj skips it)", s.hf_mmproj_file, exc)
                s.hf_mmproj_file = ""
        self.scheduler = Scheduler(
            self.model,
            self.ctx,
            n_slots=s.parallel,
            n_predict_limit=s.n_predict,
            context_shift=s.context_shift,
            kv_unified=s.kv_unified,
            cache_ram_mib=s.cache_ram,
            cont_batching=s.cont_batching,
            model_name=s.model_name or self.model_path,
            stats=self.stats,
            self_extend=self_extend,
            multimodal=self.multimodal,
        )
        for hook in self.on_ready:
            hook(self)
        self.workers = Workers(PREPARE_THREADS, STACK_BYTES)
        self.scheduler.start()
        self.t_loaded = time.time()
        self.state = EngineState.READY
        log.info(
            "model loaded in %.2fs: %s (n_ctx=%d, %d slots of %d tokens, batch %d)",
            time.perf_counter() - t0, self.model_path, self.ctx.n_ctx, s.parallel, self.ctx.n_ctx_seq, self.ctx.n_batch,
        )

    @property
    def reranking(self) -> bool:
        """Whether the rerank endpoints work: embeddings with pooling RANK (--reranking)."""
        return self.settings.embeddings_enabled and self.settings.pooling_name == "rank"

    def _check_reranker(self) -> None:
        """llama.cpp's start-up checks for pooling RANK (common_init_from_params)."""
        m = self.model
        if m.bos < 0:
            raise RuntimeError("the model's vocabulary has no BOS token: reranking will not work")
        if m.eos < 0 and m.sep < 0 and m.rerank_template is None:
            raise RuntimeError("the model's vocabulary has no EOS token, SEP token or rerank prompt: reranking will not work")
        if m.eos < 0:
            log.warning("the model's vocabulary has no EOS token: reranking uses the SEP token instead")

    @property
    def multimodal_enabled(self) -> bool:
        """Whether images are accepted (the projector may still be loading)."""
        s = self.settings
        return bool(s.mmproj or s.mmproj_url or s.hf_mmproj_file)

    def _load_projector(self, path: str) -> Multimodal:
        s = self.settings
        mm = Multimodal(path, self.model, n_threads=s.n_threads, use_gpu=s.mmproj_offload and s.n_gpu_layers != 0,
                        verbose=s.verbose)
        if mm.mrope:
            mm.close()
            raise RuntimeError(f"the projector {path} uses M-RoPE positions (Qwen2-VL style), which this server "
                               "does not support yet; use a model whose images take one position per token")
        log.info("multimodal projector loaded: %s (vision: %s, audio: %s)", path, mm.vision, mm.audio)
        return mm

    def close(self) -> None:
        for hook in self.on_shutdown:
            try:
                hook(self)
            except Exception:  # never block the shutdown
                log.exception("shutdown hook failed")
        workers_stopped = self.workers.close() if self.workers is not None else True
        if self.scheduler is not None:
            self.scheduler.stop()
            if self.scheduler.running:  # a long decode or image encode: never free what it uses
                log.warning("the scheduler did not stop in time; leaving the model loaded until exit")
                return
        if not workers_stopped:  # a huge prompt still tokenizing
            log.warning("a request is still being prepared; leaving the model loaded until exit")
            return
        if self.multimodal is not None:
            self.multimodal.close()
        if self.ctx is not None:
            self.ctx.close()
        if self.model is not None:
            self.model.close()

    # -- API for the HTTP layer ------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == EngineState.READY

    def require_ready(self) -> Scheduler:
        if self.state == EngineState.LOADING:
            raise APIError("Loading model", "unavailable_error")
        if self.state == EngineState.ERROR:
            raise APIError(f"Model failed to load: {self.error}", "server_error")
        assert self.scheduler is not None
        return self.scheduler

    @property
    def n_slots(self) -> int:
        return self.settings.parallel

    def prepare(self, tasks: list[Task]) -> None:
        """Tokenize and validate a request's tasks before they are submitted (on the request's
        own worker thread; see `prepare.py`). Raises the APIError its client gets; then none of
        the tasks holds anything."""
        preparer = self.require_ready().preparer
        try:
            for task in tasks:
                try:
                    preparer.prepare(task)
                except Exception as exc:
                    raise as_api_error(task, exc) from None
        except BaseException:
            for task in tasks:
                task.discard()
            raise

    def vocab(self) -> LlamaModel:
        """The model, for tokenizing off the scheduler thread (the vocabulary is read-only)."""
        self.require_ready()
        return self.model

    async def off_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a prepare worker: tokenizing and preparing requests, never on the
        event loop nor behind a decode step."""
        self.require_ready()
        return await self.workers.run(fn, *args)

    def submit(self, task: Task) -> None:
        self.require_ready().submit(task)

    def cancel(self, task: Task) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(task)

    def call(self, fn: Callable[[Scheduler], Any]) -> Future:
        return self.require_ready().call(fn)

    def slot_counts(self) -> tuple[int, int]:
        """(idle, processing); a racy read from another thread is fine for health checks."""
        if self.scheduler is None:
            return 0, 0
        processing = sum(1 for s in self.scheduler.slots if s.is_processing)
        return len(self.scheduler.slots) - processing, processing

    def n_ctx_slot(self) -> int:
        return self.ctx.n_ctx_seq if self.ctx is not None else self.settings.ctx_size

    def generation_settings(self, params: SlotParams | None = None) -> dict[str, Any]:
        d = (params or self.default_params).settings()
        d["n_ctx"] = self.n_ctx_slot()
        d["model"] = self.settings.model_name or self.model_path
        return d

    def slot_json(self, slot) -> dict[str, Any]:
        """One slot as in the reference's GET /slots."""
        d = self.generation_settings(slot.params)
        d["params"] = {k: v for k, v in d.items() if k not in ("model", "n_ctx")}  # today's slot shape
        d.update(
            id=slot.id,
            id_task=slot.last_task_id,
            task_id=slot.last_task_id,
            state=int(slot.state),
            is_processing=slot.is_processing,
            prompt=slot.last_prompt if isinstance(slot.last_prompt, str) else self.model.detokenize(slot.prompt_tokens) if self.model else "",
            n_past=slot.n_past,
            n_prompt_tokens=len(slot.prompt_tokens),
            n_prompt_tokens_cache=slot.n_cached,
            n_prompt_tokens_processed=len(slot.prompt_tokens) - slot.n_cached,
            next_token=slot.next_token_json(),
        )
        return d

    def slots_json(self) -> list[dict[str, Any]]:
        sched = self.require_ready()
        return [self.slot_json(s) for s in sched.slots]
