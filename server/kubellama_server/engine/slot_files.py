"""Slot save/restore/erase: a slot's KV cache and tokens as a file under --slot-save-path.

Every function here touches llama.cpp and must run on the scheduler thread
(`engine.call(lambda sched: save_slot(sched, ...))`) or before the scheduler starts.

Files: `<name>` is written by `llama_state_seq_save_file` (llama.cpp's own format, tokens
included) and `.<name>.meta.json` beside it records who wrote it (model identity, slot
context size, token count, file size and sha256). Both are written atomically: a temporary
file in the same folder, fsync, rename, fsync of the folder; a crash never leaves a truncated
file under the final name. The data is renamed first, its metadata second, and the metadata
names the data it describes (inode, mtime and sha256): a crash between the two renames leaves
new data beside old metadata, which no longer matches and is refused, never the reverse.
At most `--slot-save-max-files` files are kept: a save of a new name beyond it is a 507. Restoring checks the metadata before anything is loaded, so
a file from another model or context size is refused (400) instead of loading garbage;
llama.cpp's own check (a shape mismatch makes `llama_state_seq_load_file` return 0) is
the second line of defence, and the only one for files without metadata (e.g. written
by llama.cpp's server).

A busy slot is not waited for: save/restore/erase of a slot that is processing a request
answer 409 (`conflict_error`); retry once GET /slots shows it idle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from ..fsutil import fsync_dir, fsync_file
from ..errors import APIError
from .slot import Slot

log = logging.getLogger("kubellama.slots")

META_FORMAT = 1
# identity fields that must match for a file to be restored
IDENTITY_KEYS = ("model_size", "model_fingerprint", "n_params", "n_vocab", "n_embd", "n_layer", "vocab_sha256", "n_ctx_slot",
                 "self_extend", "mmproj_fingerprint", "lora_adapters")
FINGERPRINT_HEAD = 1 << 20  # bytes hashed from the start of the model file (GGUF header, metadata)
FINGERPRINT_SAMPLES = 32  # and this many 64 KiB samples spread over the rest (the weights)

_identity_cache: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


class SlotFileError(APIError):
    """An APIError that also says how to count it (`kubellama_slot_*_total{result}`)."""

    def __init__(self, message: str, type: str, result: str):
        super().__init__(message, type)
        self.result = result


def validate_filename(name: Any) -> str:
    """A plain file name inside the save folder; anything else is a 400."""
    if not isinstance(name, str) or not name:
        raise SlotFileError("'filename' is required: a file name inside --slot-save-path", "invalid_request_error", "invalid")
    problems = []
    if "\x00" in name:
        problems.append("a NUL byte")
    if "/" in name or "\\" in name:
        problems.append("a path separator")
    if ".." in name:
        problems.append("'..'")
    if name.startswith("."):
        problems.append("a leading dot")
    if os.path.isabs(name):
        problems.append("an absolute path")
    if len(name.encode("utf-8", "surrogatepass")) > 200:
        problems.append("more than 200 bytes")
    if any(ord(c) < 32 for c in name.replace("\x00", "")):
        problems.append("control characters")
    if problems:
        raise SlotFileError(
            f"invalid filename {name!r}: it contains {', '.join(problems)}; give a plain file name such as 'slot0.bin'",
            "invalid_request_error",
            "invalid",
        )
    return name


def meta_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.meta.json")


def model_fingerprint(path: str) -> str:
    """sha256 of the file's head and of samples across it: two models of the same shape
    (a fine-tune, another quantization run) differ here; reads ~3 MB, not the whole file."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_HEAD))
        if size > FINGERPRINT_HEAD:
            span = size - FINGERPRINT_HEAD
            for k in range(FINGERPRINT_SAMPLES):
                f.seek(FINGERPRINT_HEAD + span * k // FINGERPRINT_SAMPLES)
                h.update(f.read(64 * 1024))
    return h.hexdigest()


def identity(sched) -> dict[str, Any]:
    """What a slot file must agree on to be loaded: the model and the slot's context size."""
    model = sched.model
    ident = _identity_cache.get(model)
    if ident is None:
        h = hashlib.sha256()
        step = max(1, model.n_vocab // 2048)
        for t in range(0, model.n_vocab, step):
            h.update(t.to_bytes(4, "little"))
            h.update(model.token_bytes(t, special=True))
        try:
            size = os.path.getsize(model.path)
            fingerprint = model_fingerprint(model.path)
        except OSError:
            size, fingerprint = int(model.size), ""
        ident = {
            "model_size": size,
            "model_fingerprint": fingerprint,
            "n_params": int(model.n_params),
            "n_vocab": int(model.n_vocab),
            "n_embd": int(model.n_embd),
            "n_layer": int(model.n_layer),
            "vocab_sha256": h.hexdigest(),
        }
        _identity_cache[model] = ident
    se = sched.self_extend  # compressed positions only make sense to a server compressing alike
    mm = sched.multimodal  # cached images are the projector's embeddings: only that projector may reuse them
    # the KV holds the adapters' effect: the same adapters must be loaded (the file's scales are
    # recorded apart, in `lora_scales`, and only requests with those scales reuse the cache)
    adapters = [os.path.basename(p) for p in sched.ctx.lora_paths] or None
    return {**ident, "n_ctx_slot": int(sched.ctx.n_ctx_seq), "self_extend": [se.n, se.w] if se else None,
            "mmproj_fingerprint": _mmproj_fingerprint(mm.path) if mm else None, "lora_adapters": adapters}


@functools.lru_cache(maxsize=4)
def _mmproj_fingerprint(path: str) -> str:
    return model_fingerprint(path)


def _slot(sched, slot_id: int) -> Slot:
    if not 0 <= slot_id < len(sched.slots):
        raise SlotFileError(f"invalid slot id {slot_id}: this server has slots 0..{len(sched.slots) - 1}", "invalid_request_error", "invalid")
    slot = sched.slots[slot_id]
    if slot.is_processing:
        raise SlotFileError(
            f"slot {slot_id} is processing a request; retry when it is idle (GET /slots shows is_processing)",
            "conflict_error",
            "busy",
        )
    return slot


def _tmp_in(folder: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def _write_meta_tmp(folder: Path, name: str, meta: dict) -> str:
    tmp = _tmp_in(folder, name + ".meta")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _file_stamp(path: str | Path) -> list[int]:
    """What identifies one version of a file on this volume: inode, size, mtime."""
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_budget(folder: Path, filename: str, max_files: int) -> None:
    """507 when saving a new file name would keep more than `max_files` slot files."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    except FileNotFoundError:
        return
    if filename not in names and len(names) >= max_files:
        err = SlotFileError(
            f"--slot-save-path already holds {len(names)} slot files (--slot-save-max-files {max_files}); "
            "overwrite one of them or delete some", "insufficient_storage_error", "full")
        err.code = 507
        raise err


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def save_slot(sched, slot_id: int, folder: str | Path, filename: str, max_files: int | None = None) -> dict[str, Any]:
    """Write slot `slot_id`'s cache to `folder/filename` atomically (with its metadata)."""
    filename = validate_filename(filename)
    slot = _slot(sched, slot_id)
    folder = Path(folder)
    if max_files is not None:
        check_budget(folder, filename, max_files)
    t0 = time.perf_counter()
    tokens = list(slot.cache_tokens)
    tmp = tmp_meta = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_in(folder, filename)
        n_written = sched.ctx.state_seq_save_file(tmp, slot.id, tokens)
        if n_written <= 0:
            raise SlotFileError(
                f"llama.cpp could not write the state of slot {slot_id} to {folder} (disk full or not writable?)",
                "server_error",
                "error",
            )
        fsync_file(tmp)
        size = os.path.getsize(tmp)
        meta = {
            "file_sha256": _sha256(tmp),
            "file_stamp": _file_stamp(tmp),  # kept by the rename below
            "format": META_FORMAT,
            **identity(sched),
            "n_tokens": len(tokens),
            "file_size": size,
            "saved_at": time.time(),
            "id_slot": slot.id,
            "lora_scales": list(slot.cache_lora),
        }
        tmp_meta = _write_meta_tmp(folder, filename, meta)
        final = folder / filename
        # data first: a crash between the renames leaves new data beside the old metadata,
        # whose stamp and sha256 no longer match it (refused at restore)
        os.replace(tmp, final)
        tmp = None
        os.replace(tmp_meta, meta_path(final))
        tmp_meta = None
        fsync_dir(folder)
    except OSError as exc:
        raise SlotFileError(
            f"could not save slot {slot_id} to {folder / filename}: {exc.strerror or exc} "
            "(check that --slot-save-path is writable and has free space)",
            "server_error",
            "error",
        ) from None
    finally:
        _unlink(tmp)
        _unlink(tmp_meta)
    ms = (time.perf_counter() - t0) * 1e3
    log.info("slot %d saved to %s: %d tokens, %d bytes in %.1f ms", slot_id, filename, len(tokens), size, ms)
    return {"id_slot": slot.id, "filename": filename, "n_saved": len(tokens), "n_written": int(n_written), "timings": {"save_ms": ms}}


def read_meta(path: Path) -> dict[str, Any] | None:
    """The metadata beside a slot file; None when there is none (a file from llama.cpp)."""
    mp = meta_path(path)
    if not mp.exists():
        return None
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
        return meta
    except (OSError, ValueError) as exc:
        raise SlotFileError(f"the metadata of slot file {path.name} is unreadable ({exc}); save the slot again", "invalid_request_error", "incompatible") from None


def check_compatible(sched, path: Path) -> dict[str, Any] | None:
    """Refuse (400) a file whose metadata says another model or context size wrote it."""
    meta = read_meta(path)
    if meta is None:
        return None
    want = identity(sched)
    diffs = [f"{k} {meta.get(k)!r} != {want[k]!r}" for k in IDENTITY_KEYS if meta.get(k) != want[k]]
    if diffs:
        raise SlotFileError(
            f"slot file {path.name} was saved by a different model or context size ({'; '.join(diffs)}); "
            "it was not loaded. Restore it on a server started with the same model, --mmproj, --lora adapters, --ctx-size/--parallel and --grp-attn-n/-w",
            "invalid_request_error",
            "incompatible",
        )
    size = path.stat().st_size
    if meta.get("file_size") != size or not _same_data(path, meta):
        raise SlotFileError(
            f"slot file {path.name} does not match its metadata ({size} bytes, {meta.get('file_size')} recorded); "
            "it was not loaded (an interrupted save?): save the slot again",
            "invalid_request_error",
            "incompatible",
        )
    return meta


def _same_data(path: Path, meta: dict[str, Any]) -> bool:
    """Whether the file is the one its metadata describes: the same stamp, else the same sha256
    (a folder copied elsewhere keeps its contents but not its inodes). Older metadata has neither."""
    if "file_sha256" not in meta:
        return True
    if meta.get("file_stamp") == _file_stamp(path):
        return True
    return _sha256(path) == meta["file_sha256"]


def restore_slot(sched, slot_id: int, folder: str | Path, filename: str) -> dict[str, Any]:
    """Load `folder/filename` into slot `slot_id` (its previous cache is dropped)."""
    filename = validate_filename(filename)
    slot = _slot(sched, slot_id)
    path = Path(folder) / filename
    if not path.is_file():
        raise SlotFileError(f"slot file {filename} not found in {folder}", "not_found_error", "not_found")
    t0 = time.perf_counter()
    meta = check_compatible(sched, path)
    ctx = sched.ctx
    ctx.seq_rm(slot.id, 0, -1)
    slot.cache_tokens = []
    n_read, tokens = ctx.state_seq_load_file(str(path), slot.id, slot.n_ctx)
    if n_read <= 0:
        ctx.seq_rm(slot.id, 0, -1)
        raise SlotFileError(
            f"llama.cpp refused slot file {filename}: written by a different model, holding more tokens than "
            f"this slot's context ({slot.n_ctx}), or damaged; the slot is now empty",
            "invalid_request_error",
            "incompatible",
        )
    if tokens and tokens[0] == -1:  # LLAMA_TOKEN_NULL: today's llama.cpp server packs its token list
        ctx.seq_rm(slot.id, 0, -1)
        raise SlotFileError(
            f"slot file {filename} holds the packed token list of a newer llama.cpp server, which kubellama "
            "cannot read; save the slot with kubellama-server instead. The slot is now empty",
            "invalid_request_error",
            "incompatible",
        )
    images = sched.multimodal is not None  # image positions hold negative image keys (llama.mtmd)
    bad = [t for t in tokens if not sched.model.valid_token(t) and not (images and t < -1)]
    if bad:
        ctx.seq_rm(slot.id, 0, -1)
        raise SlotFileError(
            f"slot file {filename} holds token ids outside this model's vocabulary ({bad[:3]}...); "
            "it was written by a different model; the slot is now empty",
            "invalid_request_error",
            "incompatible",
        )
    slot.cache_tokens = tokens
    scales = (meta or {}).get("lora_scales")  # the scales its KV was computed with (older files: the default)
    slot.cache_lora = tuple(float(x) for x in scales) if isinstance(scales, list) and len(scales) == len(sched.lora_default) \
        else sched.lora_default
    slot.t_last_used = time.perf_counter()
    ms = (time.perf_counter() - t0) * 1e3
    log.info("slot %d restored from %s: %d tokens in %.1f ms", slot_id, filename, len(tokens), ms)
    return {"id_slot": slot.id, "filename": filename, "n_restored": len(tokens), "n_read": int(n_read), "timings": {"restore_ms": ms}}


def erase_slot(sched, slot_id: int) -> dict[str, Any]:
    """Drop slot `slot_id`'s prompt cache (KV cells and tokens)."""
    slot = _slot(sched, slot_id)
    n = len(slot.cache_tokens)
    sched.ctx.seq_rm(slot.id, 0, -1)
    slot.cache_tokens = []
    return {"id_slot": slot.id, "n_erased": n}
