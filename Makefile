# The book's commands. `make book` and `make test` work on a fresh machine: they install first.
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY      := .venv/bin/python
# pip repeats a harmless warning per package for this machine's local index folders; drop only that line
QUIET_PIP := sed -u '/^WARNING: Location .* is ignored/d' 
PROFILE ?= cpu
RUN     := _build/run/$(PROFILE)

.PHONY: install book run drift accept test test-fast strip clean chromium browser

install: .venv/.installed
.venv/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --no-compile -r requirements.txt 2>&1 | $(QUIET_PIP)
	.venv/bin/pip install -q --no-compile --no-deps -r requirements-nodeps.txt -e . 2>&1 | $(QUIET_PIP)
	@# Byte-compile once: these machines set PYTHONDONTWRITEBYTECODE, so without .pyc files every
	@# kernel recompiles torch, transformers and friends at import (measured: 36 s -> 12 s per kernel).
	$(PY) -m compileall -q -j 0 .venv/lib > /dev/null 2>&1 || true
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if torch.cuda.is_available() or v.endswith('+cpu') else 'expected a CPU torch build, got ' + v)"
	touch $@

## the whole book on the offline default: run every chapter (papermill), check drift, build _build/html;
## RUN_FLAGS=--one-kernel runs every chapter in one kernel (CI: the same results, the imports paid once)
RUN_FLAGS ?=
book: install
	$(PY) -m ragft.run --profile $(PROFILE) --book $(RUN_FLAGS)
	$(PY) -m ragft.drift --profile $(PROFILE) --run $(RUN)

run: install
	$(PY) -m ragft.run --profile $(PROFILE)

drift: install
	$(PY) -m ragft.drift --profile $(PROFILE) --run $(RUN)

## accept a deliberate change: copy the run's results over experiments/results/$(PROFILE)/
accept: install
	$(PY) -m ragft.drift --profile $(PROFILE) --run $(RUN) --accept

## unit tests, one run of every notebook (offline, network refused) and the checks that read it, strict book build;
## the run is a smoke run (every chapter in one kernel) unless RAGFT_TEST_RUN names a run folder of this commit
## (CI: the cpu book's, under tests/netguard)
test: install
	$(PY) -m pytest -q -ra --durations=15

## the tests that load no language model, execute no notebook and need no package index (about a minute)
test-fast: install
	$(PY) -m pytest -q -ra --durations=15 -m "not lm and not notebooks and not index"

## Debian's chromium for the browser check (no browser download); needs root and Debian's package index
chromium:
	@command -v chromium > /dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null \
	  || (apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null))
	@chromium --version

## every page of the built book in headless Chromium: JavaScript errors, glue, images, links, width; screenshots
browser: install chromium
	$(PY) -m ragft.browser _build/html

strip: install
	$(PY) -m ragft.strip chapters/*.ipynb

clean:
	rm -rf _build
