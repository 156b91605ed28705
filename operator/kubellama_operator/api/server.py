"""spec.server (llama.cpp settings and extraArgs), spec.gpu, and the pod-level settings passed through."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from ..extraargs import FORBIDDEN_FLAGS, MANAGED_FLAGS, problems as extra_args_problems
from .schema import Markers, Quantity, Rule, SpecModel, field

#: The self-extend flag kubellama-server refuses together with --mmproj (values > 1 turn it on).
SELF_EXTEND_FLAG = "--grp-attn-n"
#: A --grp-attn-n value that turns self-extend on (an integer > 1); shared by the CEL rule and the operator.
SELF_EXTEND_ON = r"^0*([2-9]|[1-9][0-9]+)$"
_REFUSED_FLAGS = MANAGED_FLAGS + list(FORBIDDEN_FLAGS)
#: Most entries in server.extraArgs (the self-extend CEL rule walks their indices).
MAX_EXTRA_ARGS = 64


def turns_on_self_extend(args: list[str]) -> bool:
    """Whether server flags set `--grp-attn-n` above 1 (`--grp-attn-n=N` or `--grp-attn-n N`), read as the
    CRD's rule (`self_extend_rule`) reads them."""
    on = re.compile(SELF_EXTEND_ON)
    for i, arg in enumerate(args):
        if arg.startswith(SELF_EXTEND_FLAG + "=") and on.match(arg[len(SELF_EXTEND_FLAG) + 1:]):
            return True
        if arg == SELF_EXTEND_FLAG and i + 1 < len(args) and on.match(args[i + 1]):
            return True
    return False


def self_extend_cel() -> str:
    """CEL on the spec: no self-extend with a projector. Standard CEL only (no list/string extensions): the
    two-argument form is found by walking the list's indices, which maxItems bounds. The list is taken through
    a conditional so that no step of the walk is an error (cel-python, the tests' evaluator, does not
    short-circuit errors)."""
    args = "(has(self.server) && has(self.server.extraArgs) ? self.server.extraArgs : [])"
    flag, on = SELF_EXTEND_FLAG, SELF_EXTEND_ON
    inline = f"{args}.exists(a, a.matches('{on.replace('^', '^' + flag + '=')}'))"
    indices = "[" + ", ".join(str(i) for i in range(MAX_EXTRA_ARGS - 1)) + "]"
    split = (f"{indices}.exists(i, i + 1 < size({args}) && {args}[i] == '{flag}' "
             f"&& {args}[i + 1].matches('{on}'))")
    return f"!has(self.model.mmproj) || !({inline} || {split})"


def _extra_args_problems(args: list[str] | None, where: str) -> list[str]:
    return extra_args_problems(list(args or []))


_REFUSED_CEL = ("self.all(a, !(a in FLAGS) && !FLAGS.exists(f, a.startsWith(f + '=')))"
                .replace("FLAGS", repr(_REFUSED_FLAGS).replace("'", '"')))


class ServerSettings(SpecModel):
    """llama.cpp server settings; unset fields keep the server's defaults."""

    context_size: int | None = field("Context size in tokens for all slots together (-c).", None, minimum=0)
    parallel: int | None = field("Number of slots, i.e. requests decoded together (-np).", None, minimum=1)
    batch_size: int | None = field("Logical batch size (-b).", None, minimum=1)
    ubatch_size: int | None = field("Physical batch size (-ub).", None, minimum=1)
    threads: int | None = field("CPU threads for generation (-t).", None, minimum=1)
    gpu_layers: int | None = field("Layers offloaded to the GPU (-ngl); default: all when gpu.count > 0.", None,
                                   minimum=0)
    embedding: bool | None = field("Serve embeddings only (--embedding).", None)
    chat_template: str | None = field("Chat template name or Jinja text (--chat-template).", None, minLength=1)
    system_prompt: str | None = field("System prompt prepended to every conversation (-spf).", None, minLength=1)
    n_predict: int | None = field("Default maximum tokens to generate, -1 = unlimited (-n).", None, minimum=-1)
    cache_ram_mib: int | None = field(
        "MiB of host memory for prompt caches evicted from slots and loaded back when a conversation returns "
        "(--cache-ram; -1 = no limit, 0 = off). Default: the server's, 8192 or a quarter of the container's "
        "memory limit if that is smaller; it counts against resources.limits.memory.", None, minimum=-1,
        alias="cacheRamMiB")
    metrics: bool = field("Expose Prometheus metrics on /metrics (--metrics).", True)
    shutdown_timeout_seconds: int = field(
        "On termination, how long running requests may finish (--shutdown-timeout). The pod's "
        "terminationGracePeriodSeconds is derived from it: 5 s preStop + this + 60 s slot save (with "
        "storage.slots.restoreOnStart) + 15 s to stop and exit.", 30, minimum=0)
    startup_timeout_seconds: int = field("How long the server may take to load the model before the pod is "
                                         "restarted.", 1800, minimum=30)
    extra_args: list[Annotated[str, Markers(maxLength=1024)]] | None = field(
        "More kubellama-server flags, passed through as they are. The operator reads them with the server's own "
        "parser (flags in full, no abbreviations): an unknown flag, a bad value, a flag the operator sets from the "
        "spec (model, host, port, alias, slots, shutdown timeout, system prompt, projector, adapters) or "
        "--api-key*, --path or --ssl-* makes the LlamaServer Failed (reason InvalidSpec) instead of a "
        "crash-looping pod.", None, maxItems=MAX_EXTRA_ARGS,
        rules=(Rule("spec.server.extraArgs may not set flags the operator manages or refuses: "
                    + ", ".join(_REFUSED_FLAGS), _REFUSED_CEL),  # the operator's check is the parser's, below
               Rule(find=_extra_args_problems)))


class Gpu(SpecModel):
    """GPU scheduling. count 0 means a CPU server."""

    count: int = field("GPUs per replica.", 0, minimum=0)
    resource_name: str = field("Extended resource to request.", "nvidia.com/gpu", minLength=1)
    product: str | None = field("Required value of the node label nvidia.com/gpu.product, e.g. NVIDIA-L4.", None)
    tensor_split: list[Annotated[float, Markers(minimum=0)]] | None = field(
        "Share of the model per GPU (-ts), e.g. [3, 1].", None, maxItems=16)
    main_gpu: int | None = field("GPU for small tensors and scratch (-mg).", None, minimum=0)

    rules = (
        Rule("spec.gpu.product, tensorSplit and mainGpu need spec.gpu.count > 0",
             "(has(self.count) && self.count > 0) || (!has(self.product) && !has(self.tensorSplit) && "
             "!has(self.mainGpu))",
             lambda g: g.count > 0 or (g.product is None and g.tensor_split is None and g.main_gpu is None)),
        Rule("spec.gpu.tensorSplit has more entries than spec.gpu.count",
             "!has(self.tensorSplit) || (has(self.count) && size(self.tensorSplit) <= self.count)",
             lambda g: g.tensor_split is None or len(g.tensor_split) <= g.count),
    )


class Resources(SpecModel):
    """Compute resources of the server container (core ResourceRequirements)."""

    limits: dict[str, Quantity] | None = field("Maximum resources.", None)
    requests: dict[str, Quantity] | None = field("Requested resources.", None)


class Toleration(SpecModel):
    """A core Toleration."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Markers(format="int64")] | None = None


class LocalObjectReference(SpecModel):
    """A LocalObjectReference."""

    name: str = field(minLength=1)
