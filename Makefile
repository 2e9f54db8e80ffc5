# The two commands: `make demo` (the main job) and `make test` (the CI suite).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ARGS    ?=
# pytest workers of `make test` (CI has 2 cores); each test file runs in one worker, so a
# file's session fixtures and compiled functions stay shared.
JOBS    ?= 2

.PHONY: demo test test-all lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes (quick no-op otherwise).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[demo,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/three-regimes sweep --model mlp_si --dataset digits \
	  --elrs 1e-3,1e-2,2e-2,3e-2,5e-2,1e-1,1 --epochs 60 --batch-size 64 \
	  --out runs/demo --overwrite $(ARGS)
	$(BIN)/three-regimes regimes runs/demo
	$(BIN)/three-regimes plot runs/demo --kind overview --out runs/demo/figures --quiet
	$(BIN)/three-regimes plot runs/demo --kind diagram --out runs/demo/figures --quiet
	$(BIN)/three-regimes plot runs/demo --kind scatter --out runs/demo/figures


test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not slow" -q -n $(JOBS) --dist loadfile $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_grid.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
