"""LlamaServer status (phase, conditions, replica counts) computed from its pods: a pure function.

Phases: Pending (nothing scheduled/started yet), Downloading (a fetch init container runs: the
model's, then the multimodal projector's, then each LoRA adapter's),
Loading (the server runs but /health is not ok yet), Ready (all desired replicas ready),
Degraded (some replicas ready, others failing), Failed (the spec cannot be honoured, or no
replica can start: download failed, server crash-looping, ...).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from .containers import CHECK_API_KEY, FETCH_LORA_PREFIX, FETCH_MMPROJ, FETCH_MODEL, SERVER_CONTAINER
from .spec import Model

FETCH_CONTAINER = FETCH_MODEL
#: The init containers that download, in the order they run, with what they download; then come the
#: LoRA adapters' (fetch-lora-0, fetch-lora-1, ...: see `fetchers`).
FETCH_CONTAINERS = ((FETCH_MODEL, "model"), (FETCH_MMPROJ, "multimodal projector"))
#: What needs "the" in "downloading the model" (a LoRA adapter's label has a number instead).
_WITH_ARTICLE = {what for _, what in FETCH_CONTAINERS}

#: kubellama-fetch exit codes -> condition reasons (see the fetcher's contract).
FETCH_EXIT_REASONS = {2: "InvalidFetchArguments", 3: "ModelNotFound", 4: "Unauthorized",
                      5: "NetworkUnreachable", 6: "DiskFull", 7: "ChecksumMismatch", 8: "NotGGUF"}
#: Env vars of the pod's containers that reference a Secret -> the spec field that names it.
_SECRET_ENV = {"API_KEY": "spec.apiKeySecretRef", "HF_TOKEN": "spec.model.tokenSecretRef"}
#: Waiting reasons meaning a container will not start without a change.
_STUCK_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                  "InvalidImageName", "CreateContainerError", "RunContainerError"}


@dataclass
class PodView:
    """What a single pod says about the rollout."""

    stage: str  # Pending | Downloading | Loading | Ready | Failed
    reason: str = ""
    message: str = ""
    model_fetched: bool = False  # the model files (model and projector) are in place
    model_info: dict[str, Any] = field(default_factory=dict)
    #: Downloading: the fetch container that runs (its log has the progress); Failed: the one that failed.
    fetcher: str = ""
    fetch_failed: bool = False  # Failed because a download failed (the ModelReady condition says so)
    fetching: str = ""  # with `fetcher`: what it downloads ("model", "LoRA adapter 1 (sql)", ...)


def _statuses(pod: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {s.get("name", ""): s for s in (pod.get("status", {}).get(key) or [])}


def _terminated(cs: dict[str, Any]) -> dict[str, Any] | None:
    state = cs.get("state", {}) or {}
    if "terminated" in state:
        return state["terminated"]
    last = cs.get("lastState", {}) or {}
    waiting = state.get("waiting", {}) or {}
    if waiting.get("reason") in _STUCK_WAITING and "terminated" in last:
        return last["terminated"]
    return None


def _fetch_info(message: str) -> dict[str, Any]:
    """The fetcher may leave `{"path": ..., "size": ...}` as its termination message on success."""
    try:
        data = json.loads(message)
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def download_progress(log_text: str | None) -> dict[str, Any] | None:
    """The last progress record in the fetcher's JSON-lines log (`kubectl logs -c fetch-model`)."""
    for line in reversed((log_text or "").splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") in ("progress", "start"):
            return record
    return None


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _downloading(what: str) -> str:
    return f"downloading the {what}" if what in _WITH_ARTICLE else f"downloading {what}"


def describe_progress(progress: dict[str, Any] | None, what: str = "model") -> str:
    """"downloading m.gguf: 42% of 4.9 GiB, 12.0 MiB/s, about 6 min left" (or less, as known).

    `what`: "model", "multimodal projector" (then "downloading the multimodal projector mmproj.gguf: ..."), or
    a LoRA adapter's label (then "downloading LoRA adapter 1 (sql), sql.gguf: ...").
    """
    if not progress:
        return _downloading(what)
    file = progress.get("file")
    if what == "model":
        text = f"downloading {file or 'the model'}"
    elif what in _WITH_ARTICLE:
        text = f"downloading the {what}" + (f" {file}" if file else "")
    else:
        text = f"downloading {what}" + (f", {file}" if file else "")
    done, total = progress.get("bytes_done"), progress.get("bytes_total")
    if isinstance(progress.get("percent"), (int, float)) and total:
        text += f": {progress['percent']:.0f}% of {_bytes(total)}"
    elif isinstance(done, (int, float)):
        text += f": {_bytes(done)} so far"
    elif total:
        text += f": {_bytes(total)}"
    rate = progress.get("rate_bytes_per_second")
    if isinstance(rate, (int, float)) and rate > 0:
        text += f", {_bytes(rate)}/s"
    eta = progress.get("eta_seconds")
    if isinstance(eta, (int, float)):
        text += f", about {max(1, round(eta / 60))} min left" if eta >= 60 else f", about {round(eta)} s left"
    return text


def _lora_index(name: str) -> int | None:
    rest = name[len(FETCH_LORA_PREFIX):] if name.startswith(FETCH_LORA_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def fetchers(inits: dict[str, dict[str, Any]], model: Model | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """The pod's download init containers, in the order they run: (name, what it downloads, its status).

    A LoRA adapter's "what" is its label ("LoRA adapter 1 (sql)"), named from `model` when it has that adapter.
    """
    out = [(name, what, inits[name]) for name, what in FETCH_CONTAINERS if name in inits]
    names = {lora.index: lora.label for lora in (model.loras if model is not None else ())}
    loras = sorted((i, name) for name in inits if (i := _lora_index(name)) is not None)
    out += [(name, names.get(i, f"LoRA adapter {i}"), inits[name]) for i, name in loras]
    return out


def _secret_refs(pod: dict[str, Any], container: str) -> list[tuple[str, str, str]]:
    """(spec field, Secret name, key) of each Secret the container's environment needs."""
    spec = pod.get("spec") or {}
    out = []
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if c.get("name") != container:
            continue
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and env.get("name") in _SECRET_ENV:
                out.append((_SECRET_ENV[env["name"]], ref.get("name", ""), ref.get("key", "")))
    return out


def stuck_container(pod: dict[str, Any], container: str, waiting: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of a container that will not start; a missing Secret or key says how to fix it.

    The operator does not read Secrets: the kubelet reports a missing one as CreateContainerConfigError
    (`secret "x" not found`, `couldn't find key k in Secret ns/x`).
    """
    detail = waiting.get("message") or waiting.get("reason", "")
    if waiting.get("reason") == "CreateContainerConfigError":
        ns = pod.get("metadata", {}).get("namespace") or "<namespace>"
        for field, secret, key in _secret_refs(pod, container):
            if f'"{secret}"' in detail or f"/{secret}" in detail:
                if "couldn't find key" in detail:
                    return "SecretKeyNotFound", (f"Secret {secret!r} ({field}) has no key {key!r}: add it or set the "
                                                 f"key in {field}.key ({container}: {detail})")
                return "SecretNotFound", (f"Secret {secret!r} ({field}) not found in namespace {ns}: create it, e.g. "
                                          f"`kubectl -n {ns} create secret generic {secret} --from-literal={key}=...`")
    return waiting.get("reason", ""), f"{container}: {detail}"


def pod_view(pod: dict[str, Any], model: Model | None = None) -> PodView:
    """What one pod says; `model` names the LoRA adapters in messages."""
    status = pod.get("status", {}) or {}
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return PodView("Pending", "Terminating", "pod is terminating")
    inits = _statuses(pod, "initContainerStatuses")
    check = (inits.get(CHECK_API_KEY, {}).get("state") or {}).get("waiting") or {}
    if check.get("reason") in _STUCK_WAITING:
        return PodView("Failed", *stuck_container(pod, CHECK_API_KEY, check))
    present = fetchers(inits, model)
    done = 0
    info: dict[str, Any] = {}
    for name, what, init in present:
        term = _terminated(init)
        if term is not None and term.get("exitCode", 0) != 0:
            code = int(term.get("exitCode", 1))
            msg = (term.get("message") or "").strip() or f"kubellama-fetch exited with code {code}"
            return PodView("Failed", FETCH_EXIT_REASONS.get(code, "DownloadFailed"),
                           f"{what} download failed: {msg}", fetcher=name, fetch_failed=True, fetching=what)
        waiting = (init.get("state", {}) or {}).get("waiting") or {}
        if waiting.get("reason") in _STUCK_WAITING:
            return PodView("Failed", *stuck_container(pod, name, waiting), fetcher=name, fetching=what)
        if term is not None:
            done += 1
            if name == FETCH_MODEL:
                info = _fetch_info(term.get("message") or "")
        elif "running" in (init.get("state") or {}):
            return PodView("Downloading", "Downloading", _downloading(what), fetcher=name, fetching=what)
    fetched = bool(present) and done == len(present)
    server = _statuses(pod, "containerStatuses").get(SERVER_CONTAINER)
    if server is None:
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return PodView("Pending", cond.get("reason") or "Unschedulable", cond.get("message") or "")
        return PodView("Pending", "PodPending", "waiting for the pod to start")
    fetched = fetched or not present or bool(server.get("state", {}).get("running"))
    if server.get("ready"):
        return PodView("Ready", "Ready", "", True, info)
    waiting = (server.get("state", {}) or {}).get("waiting") or {}
    if waiting.get("reason") in _STUCK_WAITING:
        term = (server.get("lastState", {}) or {}).get("terminated") or {}
        detail = (term.get("message") or "").strip() or waiting.get("message") or waiting["reason"]
        return PodView("Failed", "ServerCrashLoop" if waiting["reason"] == "CrashLoopBackOff" else waiting["reason"],
                       f"server: {detail}", fetched, info)
    if "running" in (server.get("state") or {}):
        return PodView("Loading", "Loading", "loading the model", fetched, info)
    return PodView("Pending", waiting.get("reason") or "ContainerCreating", waiting.get("message") or "", fetched, info)


def _condition(type_: str, ok: bool | None, reason: str, message: str, generation: int | None,
               previous: dict[str, dict[str, Any]], now: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    old = previous.get(type_)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else now
    cond = {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or now}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def condition(type_: str, ok: bool | None, reason: str, message: str, generation: int | None,
              previous: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A condition stamped now (its transition time kept while its status holds)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return _condition(type_, ok, reason, message, generation, previous, now)


def compute_status(*, name: str, namespace: str, generation: int | None, desired: int, model: Model | None,
                   endpoint: str, selector: str, pods: list[dict[str, Any]],
                   statefulset: dict[str, Any] | None, problems: list[str],
                   previous: dict[str, Any] | None = None, now: str | None = None,
                   progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full `.status` of a LlamaServer. `progress`: the first downloading pod's fetch progress."""
    now = now or datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    prev_conds = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    views = [pod_view(p, model) for p in pods]
    for v in views:
        if v.stage == "Downloading":
            v.message = describe_progress(progress, v.fetching or "model")
            break
    ready = sum(v.stage == "Ready" for v in views)
    failed = [v for v in views if v.stage == "Failed"]
    fetch_failed = [v for v in failed if v.fetch_failed]

    sts_status = (statefulset or {}).get("status", {}) or {}
    rolled_out = statefulset is not None and (
        sts_status.get("observedGeneration", 0) >= (statefulset.get("metadata", {}).get("generation") or 0)
        and sts_status.get("updatedReplicas", ready) >= desired)

    if problems:
        phase, message = "Failed", "; ".join(problems)
    elif desired == 0:
        phase, message = "Ready", "scaled to zero replicas"
    elif ready >= desired and rolled_out:
        phase, message = "Ready", f"{ready}/{desired} replicas serving"
    elif failed and ready:
        phase, message = "Degraded", f"{ready}/{desired} ready; " + failed[0].message
    elif failed:
        phase, message = "Failed", failed[0].message
    else:
        waiting = [v for v in views if v.stage != "Ready"]
        stage = next((st for st in ("Loading", "Downloading", "Pending") if any(v.stage == st for v in waiting)), None)
        prefix = f"{ready}/{desired} ready; " if ready else ""
        if stage is None and ready >= desired:
            phase, message = "Loading", prefix + "rolling out the new pod template"
        elif stage is None:
            phase, message = "Pending", prefix + "waiting for the StatefulSet to create pods"
        else:
            lead = next(v for v in waiting if v.stage == stage)
            detail = lead.message if stage != "Pending" else f"{lead.reason}: {lead.message}".strip(": ")
            phase, message = stage, prefix + detail

    # ModelReady: the model file (and its projector and adapters) is in place for at least one replica.
    from_claim = model is not None and not model.fetch_args and not (model.mmproj and model.mmproj.fetch_args) \
        and not any(lora.fetch_args for lora in model.loras)
    if problems:
        model_cond = (False, "InvalidSpec", "; ".join(problems))
    elif fetch_failed and not any(v.model_fetched for v in views):
        model_cond = (False, fetch_failed[0].reason, fetch_failed[0].message)
    elif any(v.model_fetched for v in views) or (from_claim and views):
        model_cond = (True, "FromClaim" if from_claim else "Downloaded", f"{_files(model)} in place")
    elif any(v.stage == "Downloading" for v in views):
        model_cond = (False, "Downloading", next(v.message for v in views if v.stage == "Downloading"))
    else:
        model_cond = (None, "NoPods", "no pod has started yet") if desired else (None, "ScaledToZero", "")

    if ready or not failed:
        available = (ready > 0, "MinimumReplicasAvailable" if ready else "NoReplicasReady",
                     f"{ready} of {desired} replicas ready")
    else:  # why no pod can start (a missing Secret, a crash loop, ...)
        available = (False, failed[0].reason or "NoReplicasReady", failed[0].message)
    if phase == "Failed":
        progressing = (False, "Failed", message)
    elif phase == "Ready":
        progressing = (False, "Complete", message)
    else:
        progressing = (True, phase, message)

    conditions = [
        _condition("ModelReady", *model_cond, generation, prev_conds, now),
        _condition("Available", *available, generation, prev_conds, now),
        _condition("Progressing", *progressing, generation, prev_conds, now),
    ]
    out: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "conditions": conditions,
        "replicas": len(pods),
        "readyReplicas": ready,
        "ready": f"{ready}/{desired}",
        "selector": selector,
        "endpoint": endpoint,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    if model is not None:
        m: dict[str, Any] = {"name": model.name, "file": model.file, "path": model.path,
                             "source": model.description}
        fetched = next((v.model_info for v in views if isinstance(v.model_info.get("size"), int)), {})
        before = (previous or {}).get("model") or {}
        size = fetched.get("size", before.get("sizeBytes"))
        sha = fetched.get("sha256") or before.get("sha256")
        if isinstance(size, int):
            m["sizeBytes"] = size
        if isinstance(sha, str) and sha:
            m["sha256"] = sha
        if model.mmproj is not None:
            m["mmproj"] = model.mmproj.file
        if model.loras:
            m["loras"] = [{"id": lora.index, **({"name": lora.name} if lora.name else {}), "file": lora.file}
                          for lora in model.loras]
        out["model"] = m
    return out


def _files(model: Model | None) -> str:
    """"model file A is", "model file A and projector B are", "model file A, projector B and LoRA adapters C, D are"."""
    parts = [f"model file {model.path if model else ''}"]
    if model is not None and model.mmproj is not None:
        parts.append(f"projector {model.mmproj.path}")
    if model is not None and model.loras:
        parts.append(("LoRA adapters " if len(model.loras) > 1 else "LoRA adapter ")
                     + ", ".join(lora.path for lora in model.loras))
    if len(parts) == 1:
        return f"{parts[0]} is"
    return f"{', '.join(parts[:-1])} and {parts[-1]} are"


def essence(status: dict[str, Any]) -> dict[str, Any]:
    """The status without timestamps, to decide whether it changed."""
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions", [])]
    return out
