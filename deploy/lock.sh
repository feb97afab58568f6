#!/bin/sh
# Writes the image's dependency locks (read by deploy/Dockerfile) from the repository's one lock, uv.lock:
#   deploy/requirements.lock        [project].dependencies, the app's runtime set (no extras: no [local]
#                                   llama.cpp, no test or eval tools), every pin with the hashes of all
#                                   its files; pip in the image takes the wheel for its Python and platform
#   deploy/build-requirements.lock  the `build` group ([build-system].requires: setuptools, wheel), to
#                                   build the project's own wheel offline in the image
# An export, not a second resolution: the image gets exactly the versions `make test` ran against.
# `make lock` runs it after `uv lock`; tests/infra/test_lock.py fails when these files differ from what
# this script would write. Usage: sh deploy/lock.sh [path/to/uv]   (default .venv-uv/bin/uv)
set -eu
cd "$(dirname "$0")/.."
UV=${1:-.venv-uv/bin/uv}

"$UV" export --frozen --quiet --format requirements-txt --no-dev --no-emit-project \
    -o deploy/requirements.lock
"$UV" export --frozen --quiet --format requirements-txt --only-group build --no-emit-project \
    -o deploy/build-requirements.lock
