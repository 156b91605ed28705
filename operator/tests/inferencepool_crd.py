"""The upstream InferencePool CRD (Gateway API Inference Extension), for validating what the operator writes.

Not vendored: it comes from the Go module proxy (`go mod download`, checked against the pinned sum and
the Go checksum database) into the Go module cache, or from KUBELLAMA_INFERENCEPOOL_CRD (a file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

MODULE = "sigs.k8s.io/gateway-api-inference-extension"
VERSION = "v1.6.2"
SUM = "h1:GfTwDiMta9z6vtsZZuYE2xlryUGw+PiCdTJzYePY23M="
CRD_PATH = "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"


@lru_cache(maxsize=1)
def _load() -> dict[str, Any] | str:
    """The CRD, or why it is not available."""
    path = os.environ.get("KUBELLAMA_INFERENCEPOOL_CRD")
    if not path:
        if not shutil.which("go"):
            return "'go' is not installed (it fetches the InferencePool CRD from the Go module proxy)"
        with tempfile.TemporaryDirectory() as tmp:  # outside any module: a plain download
            run = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"], cwd=tmp,
                                 capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "GOWORK": "off"})
        info = json.loads(run.stdout or "{}")
        if run.returncode or info.get("Sum") != SUM:
            return f"go mod download {MODULE}@{VERSION} failed: {info.get('Error') or run.stderr.strip()[-300:]}"
        path = str(Path(info["Dir"]) / CRD_PATH)
    return yaml.safe_load(Path(path).read_text())


def inferencepool_crd() -> dict[str, Any]:
    """The CRD; skips the test when it cannot be had (fails under KUBELLAMA_REQUIRE_INFERENCEPOOL_CRD=1)."""
    crd = _load()
    if isinstance(crd, str):
        if os.environ.get("KUBELLAMA_REQUIRE_INFERENCEPOOL_CRD") == "1":
            pytest.fail(crd)
        pytest.skip(crd)
    return crd


def v1_schema() -> dict[str, Any]:
    crd = inferencepool_crd()
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]
