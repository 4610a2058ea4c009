# The README's commands. Each target is safe to re-run: finished steps are skipped.
#   make smoke   create .venv, install, fetch Fashion-MNIST, run the smoke pipeline, print the report path
#   make test    run the test suite (what CI runs)
#   make lint    ruff, snakefmt, snakemake --lint
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := .make

.PHONY: smoke laptop test test-fast lint format install data full clean-results status report chromium \
	gpu-check gpu-check-cpu gpu-check-wheels

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

# The laptop scale: CIFAR-10 (torchvision's download into data/), or, on a machine with no
# internet, the JPEG tree data/cifar10-jpeg when it is there (workflow/configs/cifar10-jpeg.yaml).
LAPTOP_DATA := $(if $(wildcard data/cifar-10-batches-py),,$(if $(wildcard data/cifar10-jpeg/train),--configfile workflow/configs/cifar10-jpeg.yaml))

laptop: install
	$(BIN)/snakemake --cores 2 $(LAPTOP_DATA) --config scale=laptop
	@echo "Report: $(CURDIR)/reports/index.html"

full: install
	$(BIN)/snakemake --cores 1 --resources gpu=1
	@echo "Report: $(CURDIR)/reports/index.html"

# While a grid runs, from any terminal; both read the run folders only (never Snakemake's lock or
# the grid's summaries). They act on the grid the last `snakemake` ran here (results/last-grid.json:
# its scale, data and every --configfile / --config it was given), and say which; SCALE=<scale>
# for params.yaml's grid at another scale.
#   make status   per study: planned / ok / running (and its epoch) / diverged / failed / missing,
#                 wall time so far, ETA
#   make report   reports/index.html from the runs finished so far, with an interim banner and
#                 the running runs' last epochs (the final report once every run has finished)
GRID_ARGS = $(if $(SCALE),--config scale=$(SCALE),--last-grid)

status:
	@$(BIN)/python -m normrepro.status $(GRID_ARGS)

report:
	$(BIN)/python -m normrepro.report --interim $(GRID_ARGS)

# The GPU check (benchmarks/gpu_check.py; README "GPU check"): on a machine with one NVIDIA GPU,
# <= 8 min. It needs torch and the project's own code, not this Makefile's .venv (a GPU image
# has its own torch): GPU_PY is the .venv's python when there is one, else python3, and the
# package is imported from src/. The CIFAR-10 JPEG subset for its parity runs: data/cifar10-jpeg,
# or the tarball (copied into data/ or beside the checkout in ../shared/data/), extracted.
#   make gpu-check [GPU_CHECK_OUT=dir] [ARGS=--write-policy]
#   make gpu-check-cpu     the same code paths, tiny sizes, on the CPU (what tests/ runs)
#   make gpu-check-wheels  here, with internet: wheels of the trainer's imports that a GPU image
#                          may lack (jsonschema and its needs, PyYAML, tqdm), for a GPU machine
#                          without internet; installed by gpu-check when jsonschema is missing
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= benchmarks/gpu-check
GPU_WHEELS := data/gpu-check-wheels
GPU_SITE := /tmp/normrepro-gpu-check-site
GPU_PYVER ?= 3.12
DATA_TARBALL ?= $(firstword $(wildcard data/cifar10-jpeg-10k.tar.gz ../shared/data/cifar10-jpeg-10k.tar.gz))
GPU_CHECK = PYTHONPATH=src$(if $(wildcard $(GPU_WHEELS)/*.whl),:$(GPU_SITE))$${PYTHONPATH:+:$$PYTHONPATH} \
	$(GPU_PY) benchmarks/gpu_check.py

gpu-check:
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1 && ! $(GPU_PY) -c "import jsonschema, yaml, tqdm" 2>/dev/null; then \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --target $(GPU_SITE) $(GPU_WHEELS)/*.whl; fi
	$(GPU_CHECK) --out $(GPU_CHECK_OUT) $(if $(DATA_TARBALL),--data-tarball $(DATA_TARBALL)) $(ARGS)

gpu-check-cpu:
	$(GPU_CHECK) --cpu --out /tmp/normrepro-gpu-check-cpu $(ARGS)

gpu-check-wheels: install
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) \
	  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d $(GPU_WHEELS) jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
	  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 pyyaml==6.0.3 tqdm==4.70.1

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
