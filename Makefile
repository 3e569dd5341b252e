# hfseg verbs: make demo | test | test-slow | lint | bench
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hfseg-installed
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test test-slow lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		hfseg/finetune.py --recipe demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q || [ $$? -eq 5 ]  # 5 = no slow tests collected

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	for script in benchmarks/*.py; do \
		case $$script in benchmarks/common.py|benchmarks/__init__.py) continue;; esac; \
		$(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf outputs .pytest_cache
