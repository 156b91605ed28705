"""Upstream CRDs (the Gateway API Inference Extension's InferencePool, KEDA's ScaledObject), for validating
what the operator writes.

Not vendored: each comes from the Go module proxy (`go mod download`, checked against the pinned sum and
the Go checksum database) into the Go module cache, or from a file named by an environment variable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml


@dataclass(frozen=True)
class UpstreamCRD:
    module: str
    version: str
    sum: str
    path: str     # inside the module
    env: str      # a file to use instead
    served: str   # the version whose schema we validate against


INFERENCEPOOL = UpstreamCRD("sigs.k8s.io/gateway-api-inference-extension", "v1.6.2",
                            "h1:GfTwDiMta9z6vtsZZuYE2xlryUGw+PiCdTJzYePY23M=",
                            "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml",
                            "KUBELLAMA_INFERENCEPOOL_CRD", "v1")
SCALEDOBJECT = UpstreamCRD("github.com/kedacore/keda/v2", "v2.20.2", "h1:SR60v8uIcelbveS8n/1jcl8tLdBBIbHMxmdOHw8tKqA=",
                           "config/crd/bases/keda.sh_scaledobjects.yaml", "KUBELLAMA_SCALEDOBJECT_CRD", "v1alpha1")


@lru_cache(maxsize=None)
def load(crd: UpstreamCRD) -> dict[str, Any] | str:
    """The CRD, or why it is not available."""
    path = os.environ.get(crd.env)
    if not path:
        if not shutil.which("go"):
            return f"'go' is not installed (it fetches {crd.path} from the Go module proxy)"
        with tempfile.TemporaryDirectory() as tmp:  # outside any module: a plain download
            run = subprocess.run(["go", "mod", "download", "-json", f"{crd.module}@{crd.version}"], cwd=tmp,
                                 capture_output=True, text=True, timeout=300, env={**os.environ, "GOWORK": "off"})
        info = json.loads(run.stdout or "{}")
        if run.returncode or info.get("Sum") != crd.sum:
            return f"go mod download {crd.module}@{crd.version} failed: {info.get('Error') or run.stderr.strip()[-300:]}"
        path = str(Path(info["Dir"]) / crd.path)
    return yaml.safe_load(Path(path).read_text())


def crd_or_skip(crd: UpstreamCRD) -> dict[str, Any]:
    """The CRD; skips the test when it cannot be had (fails under KUBELLAMA_REQUIRE_UPSTREAM_CRDS=1)."""
    got = load(crd)
    if isinstance(got, str):
        if os.environ.get("KUBELLAMA_REQUIRE_UPSTREAM_CRDS") == "1":
            pytest.fail(got)
        pytest.skip(got)
    return got


def schema(crd: UpstreamCRD) -> dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    [version] = [v for v in crd_or_skip(crd)["spec"]["versions"] if v["name"] == crd.served]
    return version["schema"]["openAPIV3Schema"]
