#!/bin/sh
# The drift canary (`make test-latest`): the whole suite against the newest versions that pyproject.toml's
# ranges allow today, not the locked ones. It copies the checkout (tracked files and uncommitted edits) to
# a throw-away folder, moves every pin there to the newest allowed (`uv lock --upgrade`, both locks), runs
# the README's test command in the copy (its own .venv, .venv-infra and .venv-langgraph), prints which
# versions moved, and leaves the real checkout and its environments untouched. A failure here is the next
# upstream break, found before anyone runs `make lock-upgrade`: fix it, or bound the range (with a reason
# in pyproject.toml), then upgrade the lock.
# Usage: sh tests/latest.sh [path/to/uv]   (default .venv-uv/bin/uv). The copy stays in $LATEST_DIR
# (default ${TMPDIR:-/tmp}/hybrid-chat-latest) for a look after a failure; the next run replaces it.
set -eu
cd "$(dirname "$0")/.."
UV=$(realpath "${1:-.venv-uv/bin/uv}")
LATEST_DIR=${LATEST_DIR:-${TMPDIR:-/tmp}/hybrid-chat-latest}

rm -rf "$LATEST_DIR"
mkdir -p "$LATEST_DIR"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$LATEST_DIR" 2>/dev/null || true
cp uv.lock "$LATEST_DIR/uv.lock.before"
cp infra/tools/uv.lock "$LATEST_DIR/infra-tools-uv.lock.before"
cd "$LATEST_DIR"
# A repository of its own (a test reads `git status` to see what the servers leave behind).
git init -q && git add -A && git -c user.name=canary -c user.email=canary@localhost commit -q -m copy
"$UV" lock --upgrade --quiet
"$UV" lock --upgrade --quiet --project infra/tools
sh deploy/lock.sh "$UV"

echo "== versions that moved (locked -> newest allowed) =="
python3 - <<'PY'
import tomllib
def versions(path):
    with open(path, "rb") as fh:
        return {(p["name"], p.get("version")) for p in tomllib.load(fh)["package"]}
for before, after in (("uv.lock.before", "uv.lock"), ("infra-tools-uv.lock.before", "infra/tools/uv.lock")):
    old, new = dict(versions(before)), dict(versions(after))
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            print(f"  {after}: {name} {old.get(name) or '(new)'} -> {new.get(name) or '(gone)'}")
PY
echo "== make test in $LATEST_DIR =="
# The copy's own uv: the Makefile would otherwise install it again from requirements-uv.txt.
mkdir -p .venv-uv/bin && ln -sf "$UV" .venv-uv/bin/uv && touch .venv-uv/bin/uv
make test
