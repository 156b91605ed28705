"""The project's images for the local node, built by BuildKit from images/*/Dockerfile.

No registry is reachable here, so the Dockerfiles' public base (python:3.x-slim-bookworm)
is replaced, through their BASE_IMAGE build argument, by a Debian bookworm root file
system made from Debian's packages (`base.sh`), handed to BuildKit as an OCI layout
(named context). The llama-cpp-python wheel that `make install` compiled for this machine
goes in as the `prebuilt-wheels` named context, so the image build does not compile
llama.cpp again. Images land in containerd's k8s.io namespace, where the kubelet finds them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kubellama_node import REPO_ROOT, LocalNode, _script_output, cache_dir

BASE_REF = "localhost/kubellama-base:bookworm"
#: What each project image is built from: (image name, Dockerfile).
PROJECT_IMAGES = (("kubellama-server", "images/server/Dockerfile"),
                  ("kubellama-operator", "images/operator/Dockerfile"))


def base_layout(node: LocalNode) -> tuple[Path, str]:
    """The Debian base (base.sh's tarball) as an OCI layout: (folder, manifest digest).
    Made once per tarball; later runs reuse the folder."""
    tarball = _script_output("base.sh", "--print-path")
    layout = tarball.with_suffix(".oci")
    if not (layout / "index.json").is_file():
        ctx = tarball.with_suffix(".ctx")
        shutil.rmtree(ctx, ignore_errors=True)
        ctx.mkdir()
        os.link(tarball, ctx / "rootfs.tar")
        (ctx / "Dockerfile").write_text("FROM scratch\nADD rootfs.tar /\nCMD [\"bash\"]\n")
        tmp = layout.with_suffix(".oci.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        node.build(["--frontend", "dockerfile.v0", "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                    "--output", f"type=oci,dest={tmp},tar=false"], "the Debian base image")
        shutil.rmtree(ctx, ignore_errors=True)
        shutil.rmtree(layout, ignore_errors=True)
        tmp.rename(layout)
    index = json.loads((layout / "index.json").read_text())
    return layout, index["manifests"][0]["digest"]


def package_secrets() -> list[str]:
    """This machine's package settings for RUN steps (pip's config and the CA bundle it
    trusts), passed as BuildKit secrets: mounted while a step runs, never in an image."""
    args = []
    pip_conf = Path("/etc/pip.conf")
    if pip_conf.is_file():
        args += ["--secret", f"id=pip.conf,src={pip_conf}"]
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        args += ["--secret", f"id=ca-certificates.crt,src={ca}"]
    return args


def prebuilt_wheels() -> Path | None:
    """The folder where scripts/setup-venv.sh caches this machine's llama-cpp-python wheel."""
    folders = sorted((cache_dir() / "wheels").glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders:
        if list(folder.glob("llama_cpp_python-*.whl")):
            return folder
    return None


def build_project_images(node: LocalNode, repo: str, tag: str) -> list[str]:
    """Build images/server and images/operator with their Dockerfiles (as they are, on the
    Debian base) into containerd's k8s.io namespace as REPO/NAME:TAG. BuildKit's cache makes
    an unchanged rebuild take seconds."""
    layout, digest = base_layout(node)
    refs = []
    wheels = prebuilt_wheels()
    for name, dockerfile in PROJECT_IMAGES:
        ref = f"{repo}/{name}:{tag}"
        args = [
            "--frontend", "dockerfile.v0",
            "--local", f"context={REPO_ROOT}", "--local", f"dockerfile={(REPO_ROOT / dockerfile).parent}",
            "--opt", f"filename={Path(dockerfile).name}",
            # The builtin Dockerfile frontend, not the `# syntax=` image (no registry here).
            "--opt", "cmdline=",
            "--opt", f"build-arg:BASE_IMAGE={BASE_REF}",
            "--oci-layout", f"base={layout}",
            "--opt", f"context:{BASE_REF}=oci-layout://base@{digest}",
            *package_secrets(),
            "--output", f"type=image,name={ref},unpack=true",
        ]
        if wheels is not None:
            args += ["--local", f"wheels={wheels}", "--opt", "context:prebuilt-wheels=local:wheels"]
        node.build(args, ref)
        refs.append(ref)
    return refs


def project_version() -> str:
    import re

    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)
