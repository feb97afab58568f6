#!/bin/sh
# Regenerates the image's dependency locks (read by deploy/Dockerfile) from pyproject.toml:
#   deploy/requirements.lock        [project].dependencies, the app's runtime set (no extras: no [local]
#                                   llama.cpp, no test or eval tools), every transitive pin with its hashes
#   deploy/build-requirements.lock  [build-system].requires (setuptools, wheel), to build the project's
#                                   own wheel offline in the image
# Run it from anywhere after changing either list, then commit both files:
#   sh deploy/lock.sh                       # resolves against today's PyPI
#   LOCK_DATE=2026-11-26 sh deploy/lock.sh  # the same resolution as the committed lock (reproducible)
# uv resolves for the image, not for this machine: CPython 3.11 on x86_64 glibc 2.36 (python:3.11-slim-
# bookworm), wheels only (the image has no compiler). tests/infra/test_lock.py fails when the lock and
# pyproject.toml disagree. uv comes from .venv-infra (`make infra-tools`), or set UV=/path/to/uv.
set -eu
cd "$(dirname "$0")/.."
UV=${UV:-.venv-infra/bin/uv}
DATE=${LOCK_DATE:-$(date -u +%Y-%m-%d)}
PYTHON=${PYTHON:-python3}

"$UV" pip compile pyproject.toml --quiet --no-progress \
    --python-version 3.11 --python-platform x86_64-manylinux_2_36 --only-binary :all: \
    --generate-hashes --exclude-newer "$DATE" \
    -o deploy/requirements.lock

"$PYTHON" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
  | "$UV" pip compile - --quiet --no-progress \
    --python-version 3.11 --python-platform x86_64-manylinux_2_36 --only-binary :all: \
    --generate-hashes --exclude-newer "$DATE" \
    -o deploy/build-requirements.lock
