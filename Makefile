# Every target creates .venv and installs the package on first use; the stamp file makes a
# second run skip the install (it is redone only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data
# torch/torchvision are pinned here to the versions this project is tested with; pip takes them from a local
# wheel cache where the machine has one.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast test-min-deps lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(VENV)/.docs: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $(VENV)/.docs

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $(VENV)/.bench

demo: $(STAMP)
	$(BIN)/python -m lightning_optim.demo

# the suite on 2 pytest-xdist workers (the 2 cores of CI), each test handed out as a worker frees up (worksteal);
# the ranks of multi-process runs fork from a warm fork server (tests/launch.py), a run several tests check is made
# once per session (tests.conftest.run_once_per_session); the tests' process groups take ports from each worker's
# own block (tests/ports.py); 455 s on this machine, idle (was 756 s before the fork server); PYTEST_WORKERS=0: one process
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) tests benchmarks/tests

# the lowest versions pyproject.toml allows (torch and torchvision stay pinned), in their own venv
MIN_PINS ?= lightning==2.6.0 torchmetrics==1.4.0 'jsonargparse[signatures]==4.39.0'
test-min-deps:
	test -x .venv-min/bin/python || $(PY) -m venv .venv-min
	.venv-min/bin/python -m pip install -q --upgrade pip
	.venv-min/bin/python -m pip install -q $(TORCH_PINS)
	.venv-min/bin/python -m pip install -q -e '.[dev]' $(MIN_PINS)
	OMP_NUM_THREADS=1 .venv-min/bin/python -m pytest -q $(PYTEST_PARALLEL) tests benchmarks/tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow" tests benchmarks/tests

lint: $(STAMP)
	$(BIN)/ruff check lightning_optim tests benchmarks examples
	$(BIN)/ruff format --check lightning_optim tests benchmarks examples

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks --data-dir $(DATA_DIR)

docs: $(VENV)/.docs
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .venv-min site build *.egg-info lightning_logs
