# Two-command set-up: `make demo` and `make test` each create .venv and install what they need (idempotent).
# PyTorch is pinned and installed before the package, so pip takes the CPU build and never pulls a GPU build.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.entrolab-installed

.PHONY: all demo test bench bench-quick lint format clean

all: test

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev,lab]"
	@touch $(STAMP)

# The main job: the entropy lab on the embedded default (report in lab-runs/demo/report.html).
demo: $(STAMP)
	$(PY) -m entrolab lab --out lab-runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest

# The baselines a user would otherwise use.  verl is installed without its dependencies (Ray, vLLM, ...): the
# benchmark runs its torch-only functions from the installed source files.
BENCH_STAMP := $(VENV)/.entrolab-bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet "trl==1.16.0"
	$(PY) -m pip install --quiet --no-deps "verl==0.9.1"
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/roofline.py
	$(PY) bench/entropy.py
	$(PY) bench/losses.py

bench-quick: $(BENCH_STAMP)
	$(PY) bench/entropy.py --quick
	$(PY) bench/losses.py --quick

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy src

format: $(STAMP)
	$(PY) -m ruff check --fix src tests bench
	$(PY) -m ruff format src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
