"""The scheduler loop: one thread owns every llama.cpp call that touches the KV cache.

Each turn drains the thread-safe command queue (new tasks, cancellations, control calls),
launches queued tasks into free slots (`launcher.py`), then runs one step: `plan_step`
(`planner.py`, pure) decides what the next decode holds, the executor (`executor.py`)
fills one batch and calls `llama_decode` once, and `output.py` samples and answers the
tasks. Tasks arrive prepared (`prepare.py`: tokenized and validated on the request's own
thread); an unprepared one is prepared at launch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from ..errors import APIError
from ..llama.context import Batch, LlamaContext
from ..llama.model import LlamaModel
from ..llama.mtmd import Multimodal
from .executor import Executor
from .launcher import Launcher
from .output import Output
from .planner import POOLED_KINDS, PlanConfig, plan_step  # noqa: F401 - POOLED_KINDS: its old home
from .prepare import Preparer
from .prompt_cache import PromptCache, limit_bytes
from .self_extend import SelfExtend
from .slot import Slot
from .stats import EngineStats
from .task import Outbox, Task
from .workers import start_thread

log = logging.getLogger("kubellama.scheduler")

# the scheduler thread's stack: llama.cpp's grammar code recurses (bounded by --max-grammar-depth,
# with this margin whatever `ulimit -s` the container has)
STACK_BYTES = 256 << 20


class Scheduler:
    def __init__(
        self,
        model: LlamaModel,
        ctx: LlamaContext,
        *,
        n_slots: int,
        n_predict_limit: int = -1,
        cont_batching: bool = True,
        model_name: str = "",
        stats: EngineStats | None = None,
        self_extend: SelfExtend | None = None,
        multimodal: Multimodal | None = None,
        context_shift: bool = True,
        kv_unified: bool = False,
        cache_ram_mib: int = 0,
    ):
        self.model = model
        self.ctx = ctx
        self.n_predict_limit = n_predict_limit
        self.context_shift = context_shift  # --context-shift: cut long prompts, shift a full context
        self.kv_unified = kv_unified  # one KV pool shared by the slots (each may use all of n_ctx)
        self.cont_batching = cont_batching
        self.model_name = model_name
        self.stats = stats or EngineStats()
        self.self_extend = self_extend
        self.multimodal = multimodal
        # --cache-ram: slots' prompt caches kept in host memory (None: disabled, no copies)
        self.prompt_cache = PromptCache(limit_bytes(cache_ram_mib)) if cache_ram_mib != 0 else None
        self.slots = [Slot(id=i, n_ctx=ctx.n_ctx_seq, cache_lora=ctx.lora_scales) for i in range(n_slots)]
        self.batch = Batch(ctx.n_batch, 1)
        self.waiting: deque[Task] = deque()
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox = Outbox()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.t_alive = time.monotonic()  # the loop's last turn (GET /health: stuck or dead)
        self.system_tokens: list[int] = []  # shared prefix of every slot (system prompt)
        self.system_prompt: str = ""
        # LoRA: the scales of requests that name none (POST /lora-adapters), one per adapter
        self.lora_default: tuple[float, ...] = ctx.lora_scales
        self.plan_config = PlanConfig(
            n_batch=ctx.n_batch, n_ubatch=ctx.n_ubatch, cont_batching=cont_batching, self_extend=self_extend,
            lora=bool(ctx.lora_paths), context_shift=context_shift, can_shift=ctx.can_shift,
            n_predict_limit=n_predict_limit, keep_bos=int(bool(getattr(getattr(ctx, "model", None), "add_bos", False))))
        self.last_kind = ""  # the kind of the last plan (pooled inputs and generation take turns)
        self.preparer = Preparer(self)
        self.launcher = Launcher(self)
        self.executor = Executor(self)
        self.output = Output(self)

    # -- thread-safe API ----------------------------------------------------
    def start(self) -> None:
        self._thread = start_thread(self._run, "kubellama-scheduler", STACK_BYTES)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, task: Task) -> None:
        self.commands.put(("task", task))

    def queued(self) -> int:
        """Tasks submitted and not in a slot yet (read from any thread: approximate)."""
        return len(self.waiting) + self.commands.qsize()

    def has_work(self) -> bool:
        return bool(self.waiting) or not self.commands.empty() or any(s.run is not None for s in self.slots)

    def stalled_for(self) -> float:
        """Seconds the loop has not turned while it has work (0 when idle or turning)."""
        return time.monotonic() - self.t_alive if self.has_work() else 0.0

    def cancel(self, task: Task) -> None:
        task.cancelled = True
        self.commands.put(("cancel", task))

    def call(self, fn: Callable[["Scheduler"], Any]) -> Future:
        """Run `fn(scheduler)` on the scheduler thread between two steps."""
        fut: Future = Future()
        self.commands.put(("call", fn, fut))
        return fut

    def set_system_prompt(self, text: str) -> None:
        """Set the shared system prompt (scheduler thread or before start).

        Tasks prepared from now on get it in front; running and already-prepared tasks
        keep theirs. Its KV is computed once and copied into other slots.
        """
        self.system_prompt = text
        self.system_tokens = self.model.tokenize(text, add_special=self.model.add_bos, parse_special=True) if text else []

    # -- counters (tests, metrics) ----------------------------------------------------
    @property
    def last_batch_slots(self) -> int:
        return self.executor.last_batch_slots

    @property
    def max_batch_slots(self) -> int:
        return self.executor.max_batch_slots

    @max_batch_slots.setter
    def max_batch_slots(self, value: int) -> None:
        self.executor.max_batch_slots = value

    @property
    def max_pooled_slots(self) -> int:
        return self.executor.max_pooled_slots

    @max_pooled_slots.setter
    def max_pooled_slots(self, value: int) -> None:
        self.executor.max_pooled_slots = value

    # -- the loop -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.turn()

    def turn(self, block: bool = True) -> None:
        """One turn: commands, launches, one step. Sleeps on the command queue (up to 0.5 s,
        when `block`) only when there is nothing to do: a deferred task must start in the
        step right after a slot frees up."""
        self.t_alive = time.monotonic()
        idle = not self.waiting and not any(s.run is not None for s in self.slots)
        try:
            self._drain_commands(block=block and idle)
            self.launcher.launch_waiting()
            if any(s.run is not None for s in self.slots):
                self.step()
        except Exception:  # never let the loop die: fail active tasks instead
            log.exception("scheduler step failed")
            self.output.fail_all(APIError("internal error in the scheduler (see server log)", "server_error"))
        finally:
            self.outbox.flush()

    def step(self) -> None:
        """Plan one decode and execute it."""
        plan = plan_step(self.slots, self.plan_config, self.last_kind)
        self.last_kind = plan.kind
        if plan:
            self.executor.execute(plan)

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self.commands.get(timeout=0.5) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(cmd)
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "task":
            self.waiting.append(cmd[1])
        elif kind == "cancel":
            self._cancel(cmd[1])
        elif kind == "call":
            fn, fut = cmd[1], cmd[2]
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self))
                except BaseException as exc:  # delivered to the caller
                    fut.set_exception(exc)

    def _cancel(self, task: Task) -> None:
        if task.slot is None:  # queued (or not even queued yet): the launch pass drops it, O(1) here
            if not task.done:
                task.done = True
                task.discard()
                self.stats.on_cancel()
            return
        slot = task.slot
        if slot.task is task:
            log.debug("slot %d: task %d cancelled", slot.id, task.id)
            self.output.finish_timings(slot.run)
            slot.release()
            self.stats.on_cancel()
