# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
INVOKE := $(VENV)/bin/invoke
DEB_PACKAGES := erlang-base erlang-inets erlang-crypto erlang-dev runsc wrk openssh-server chromium \
	gcc libc6-dev libssl-dev stress-ng docker-registry skopeo busybox-static ca-certificates apache2-utils

.PHONY: setup deb demo test lint bench clean

setup: deb $(VENV)/.installed

deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "not root: install the missing Debian packages with:"; \
	  echo "  sudo apt-get install -y $$missing"; \
	  echo "going on without them; the tests that need them will fail naming the tool"; \
	fi

$(VENV)/.installed: pyproject.toml setup.py pipeline/_native.c
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

lint: setup
	$(VENV)/bin/ruff check pipeline tests bench tasks.py
	$(VENV)/bin/ruff format --check pipeline tests bench tasks.py
	$(VENV)/bin/mypy pipeline

# Two workers (xdist): most tests wait on releases, sandboxes and emulators rather than compute.
# Sandbox modules share one worker (tests/conftest.py SANDBOX_MODULES); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: lint
	$(VENV)/bin/pytest -q --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

demo: setup
	$(INVOKE) demo

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
