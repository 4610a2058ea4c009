# The README's commands. Each target is safe to re-run: finished steps are skipped.
#   make smoke   create .venv, install, fetch Fashion-MNIST, run the smoke pipeline, print the report path
#   make test    run the test suite (what CI runs)
#   make lint    ruff, snakefmt, snakemake --lint
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := .make

.PHONY: smoke laptop test test-fast lint format install data full clean-results status report chromium

$(STAMP)/venv: pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)/venv

# Fashion-MNIST for the smoke scale: Debian's package when apt works (no internet needed),
# otherwise torchvision downloads it into data/ the first time a run needs it.
$(STAMP)/data:
	@mkdir -p $(STAMP)
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST: not installed system-wide; torchvision will download it into data/"; fi
	@touch $@

data: $(STAMP)/data

# Headless Chromium for the browser tests (the report opened from disk), installed the same way:
# Debian's package when apt works as root; otherwise those tests say they skip and why.
$(STAMP)/chromium:
	@mkdir -p $(STAMP)
	@if command -v chromium >/dev/null; then echo "Chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "Chromium: not installed (needs root for apt-get); the browser tests will skip"; fi
	@touch $@

chromium: $(STAMP)/chromium

smoke: install data
	$(BIN)/snakemake --cores 2 --config scale=smoke
	@echo "Report: $(CURDIR)/reports/index.html"

# The laptop scale: real CIFAR-10 (torchvision's download into data/), or, on a machine with no
# internet, the JPEG tree data/cifar10-jpeg when it is there (workflow/configs/cifar10-jpeg.yaml).
LAPTOP_DATA := $(if $(wildcard data/cifar-10-batches-py),,$(if $(wildcard data/cifar10-jpeg/train),--configfile workflow/configs/cifar10-jpeg.yaml))

laptop: install
	$(BIN)/snakemake --cores 2 $(LAPTOP_DATA) --config scale=laptop
	@echo "Report: $(CURDIR)/reports/index.html"

full: install
	$(BIN)/snakemake --cores 1 --resources gpu=1
	@echo "Report: $(CURDIR)/reports/index.html"

# While a grid runs, from any terminal; both read the run folders only (never Snakemake's lock or
# the grid's summaries). SCALE=smoke for a grid started with --config scale=smoke.
#   make status   per study: planned / ok / running (and its epoch) / diverged / failed / missing,
#                 wall time so far, ETA
#   make report   reports/index.html from the runs finished so far, with an interim banner and
#                 the running runs' last epochs (the final report once every run has finished)
status:
	@$(BIN)/python -m normrepro.status $(if $(SCALE),--config scale=$(SCALE))

report:
	$(BIN)/python -m normrepro.report --interim $(if $(SCALE),--config scale=$(SCALE))

test: install data chromium
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	@# snakemake --lint: the only finding allowed is "Specify a conda environment or container
	@# for each rule": every rule runs the project's own .venv (see workflow/rules/train.smk).
	@mkdir -p $(STAMP)
	@$(BIN)/snakemake --lint --config scale=smoke > $(STAMP)/snakemake-lint.txt 2>&1 || true
	@if grep -E '^\s+\* ' $(STAMP)/snakemake-lint.txt | grep -v 'Specify a conda environment'; then \
	  cat $(STAMP)/snakemake-lint.txt; exit 1; else echo "snakemake --lint: only the documented conda finding"; fi

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt Snakefile workflow/rules

clean-results:
	rm -rf results reports/index.html reports/summary.csv .snakemake
