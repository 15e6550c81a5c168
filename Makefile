# make demo: install what is needed, build an emulated compute node with 2 VMs, show each VM
#            reading its own metadata through the trap and the flow table, then remove it all.
#            make demo KEEP=1 leaves it up and prints the command that removes it.
# make test: install what is needed and run the whole test suite (as root for the namespace tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PKGS := iproute2 libnetfilter-queue-dev libnfnetlink-dev gcc curl iputils-ping procps nftables openssl
DEMO_PREFIX ?= demo

BENCH_PKGS := haproxy nginx-light wrk
SOAK_SECONDS ?= 180
SOAK_VMS ?= 16

.PHONY: install system-deps venv demo test unit lint soak bench bench-deps clean

install: system-deps venv

# Debian packages, installed only when missing (apt-get update only then too).
system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | system-deps
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { echo "installing python3-venv"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import netfilterqueue, pyroute2, httptools, uvloop, scapy, pytest, mypy" && touch $@

demo: install
	@bash scripts/demo.sh $(DEMO_PREFIX) $(if $(KEEP),keep,)

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra tests

# Minutes of 16 VMs running cloud-init's metadata sequence; too long for CI (see the README).
soak: install
	$(BIN)/python scripts/soak.py --vms $(SOAK_VMS) --seconds $(SOAK_SECONDS)

# The benchmark suite beside its references (haproxy, kernel DNAT, nginx upstream); see benchmarks/run.py.
BENCH_ARGS ?= --repeat 3
bench: install bench-deps
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# haproxy and nginx only as tools run inside the benchmark's namespaces: never started as host services.
bench-deps:
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
	  [ -n "$$made" ] && rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

unit: venv
	$(BIN)/python -m pytest -q -m "not netns" tests

# ruff and mypy (pinned in pyproject.toml's test extra; mypy checks the packages listed under [tool.mypy])
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
