# Two commands do everything: `make demo` and `make test`. Everything else is what they build on.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lock clean help

help:
	@echo "make demo   set up, train on the digits sample, serve it, predict, report (all local)"
	@echo "make test   the whole test suite (what CI runs)"
	@echo "make setup  the virtual environment only (.venv, from requirements.lock)"

setup: $(STAMP)

# The lock is shared by development, CI and the image; the package is installed on top, without deps.
$(STAMP): requirements.lock container_src/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip<26"
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps -e container_src
	touch $(STAMP)

demo: setup
	$(PY) launch.py train --local process --job-name demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow and not docker"

# Re-resolve the lock from requirements.in (needs the package index).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade "pip<26" && .lock-venv/bin/pip install --quiet -r requirements.in
	.lock-venv/bin/pip freeze --exclude-editable > requirements.lock && rm -rf .lock-venv

clean:
	rm -rf local_jobs reports .pytest_cache
