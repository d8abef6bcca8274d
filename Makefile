# Two-command set-up: `make demo` and `make test` each create .venv and install what they need (idempotent).
# PyTorch is pinned and installed before the package, so pip takes the CPU build and never pulls a GPU build.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.entrolab-installed

.PHONY: all demo test docs browser bench bench-quick lint format clean

all: test

$(STAMP): pyproject.toml Makefile constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev,lab,hf]" -c constraints.txt
	@touch $(STAMP)

# The main job: the entropy lab on the embedded default (report in lab-runs/demo/report.html).
demo: $(STAMP)
	$(PY) -m entrolab lab --out lab-runs/demo --continue --overwrite

# The engines the integration suites run inside (TRL and verl share one environment: transformers 5.10.x satisfies
# both), the gallery's (gymnasium, stable-baselines3) and bitsandbytes (8-bit optimizers);
# ENTROLAB_REQUIRE_ENGINES=1 turns a missing engine into a failure instead of a skip.
ENGINES_STAMP := $(VENV)/.entrolab-engines-installed
$(ENGINES_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,lab,hf,trl,verl,gallery,optim]" -c constraints.txt
	@touch $(ENGINES_STAMP)

test: $(ENGINES_STAMP) browser
	ENTROLAB_REQUIRE_ENGINES=1 $(PY) -m pytest

# The API reference, generated from the docstrings (Sphinx autodoc; warnings are errors): docs/_build/api/index.html.
# The test suite builds it too (tests/test_api_docs_on_cpu.py).
docs: $(ENGINES_STAMP)
	$(PY) -m sphinx -b html -W --keep-going -q docs/api docs/_build/api
	@echo "API reference: docs/_build/api/index.html"

# Debian's chromium for the test that opens the lab report in a headless browser; installed when missing and this
# is root on a Debian-like machine (CI is), else that test skips (under CI it fails instead).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report test"; \
	    for try in 1 2; do \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        chromium) >/dev/null 2>&1 && break; sleep 5; \
	    done; \
	  else echo "chromium not installed (needs root and apt-get): the report's browser test will skip"; fi; }

# The baselines a user would otherwise use (TRL, verl) are the engines' extras.
BENCH_STAMP := $(ENGINES_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/roofline.py
	$(PY) bench/entropy.py
	$(PY) bench/sampling.py
	$(PY) bench/trainer.py
	$(PY) bench/integrations.py

bench-quick: $(BENCH_STAMP)
	$(PY) bench/entropy.py --quick
	$(PY) bench/sampling.py --quick
	$(PY) bench/trainer.py --quick
	$(PY) bench/integrations.py --quick

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy src

format: $(STAMP)
	$(PY) -m ruff check --fix src tests bench
	$(PY) -m ruff format src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
