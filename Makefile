# make demo: install what is needed, build an emulated compute node with 2 VMs, show each VM
#            reading its own metadata through the trap and the flow table, then remove it all.
#            make demo KEEP=1 leaves it up and prints the command that removes it.
#            make demo GUEST=1 also builds the Debian guest image (once) and has vrouter-lab check boot it as a QEMU guest that
#            configures itself with cloud-init from the node.
#            make demo NODES=1 builds a cloud of three compute nodes configured through etcd instead:
#            a VM on each, metadata, pings over the overlay, a link-local service, rt/nh/mpls.
#            make demo DATAPATH=ebpf runs it on the kernel datapath (eBPF) instead of nfqueue.
# make test: install what is needed and run the whole test suite (as root for the namespace tests).
# make test-guests: only the tests that boot guests (the test initramfs and the Debian image).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PKGS := iproute2 libnetfilter-queue-dev libnfnetlink-dev gcc curl iputils-ping procps nftables openssl \
	qemu-system-x86 qemu-utils cpio openssh-client tcpdump hping3 etcd-server genisoimage \
	clang llvm libbpf-dev libbpf1 bpftool linux-libc-dev isc-dhcp-client
# for make guest-image only: Debian's image builder
IMAGE_PKGS := mmdebstrap e2fsprogs
GUEST_DIR := build/guest
GUEST_IMAGE := $(GUEST_DIR)/debian12.qcow2
GUEST_INITRAMFS := $(GUEST_DIR)/initramfs/initramfs.cpio.gz
DEMO_PREFIX ?= demo
DATAPATH ?= nfqueue

BENCH_PKGS := haproxy nginx-light wrk iperf3
SOAK_SECONDS ?= 180
SOAK_VMS ?= 16
SOAK_NODES ?= 1
FUZZ_SECONDS ?= 270
CHAOS_DATAPATH ?= both
CHAOS_ARGS ?=

.PHONY: install bpf system-deps busybox venv demo test test-clients test-guests guest-image guest-initramfs image-deps unit lint soak fuzz chaos bench bench-deps clean cluster-latency bench-ipv6

install: system-deps busybox venv bpf

# The ebpf datapath's kernel program, built from its C source with Debian's clang and libbpf
# headers (nothing prebuilt is fetched); the agent loads it with [FLOWS] datapath = ebpf.
BPF_SRC := dataplane/ebpf/vrouter.bpf.c
BPF_OBJ := dataplane/ebpf/vrouter.bpf.o
bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC) | system-deps
	clang -O2 -g -target bpf -mcpu=v3 -Wall -Werror -I/usr/include/$$(gcc -dumpmachine) -c $< -o $@

# Debian packages, installed only when missing (apt-get update only then too).  No service they
# bring is started on the host (policy-rc.d says no while apt runs): etcd-server's etcd runs only
# inside the lab's namespaces (topology/etcd.py), so when this installs it, its etcd.service,
# which the package enables, is also disabled.
system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
	  [ -n "$$made" ] && rm -f /usr/sbin/policy-rc.d; \
	  case " $$missing " in *" etcd-server "*) \
	    systemctl disable etcd.service >/dev/null 2>&1 || true; systemctl stop etcd.service >/dev/null 2>&1 || true;; \
	  esac; exit $$rc; \
	fi

# udhcpc for the namespace VMs' DHCP (netns_setup.sh up --dhcp): any busybox will do; if there is
# none, busybox-static (which conflicts with Debian's busybox, so it is not installed beside one).
busybox:
	@command -v busybox >/dev/null || { echo "installing Debian packages: busybox-static"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null; }

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | system-deps
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { echo "installing python3-venv"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import netfilterqueue, pyroute2, httptools, uvloop, scapy, pytest, mypy, dpkt, prometheus_client, etcd3gw, lxml, selenium" && touch $@

demo: install $(if $(GUEST),guest-image,)
	@DATAPATH=$(DATAPATH) bash scripts/demo.sh $(DEMO_PREFIX) $(if $(KEEP),keep,) $(if $(GUEST),guest,) $(if $(NODES),nodes,)

# The test guest: Debian's cloud kernel and busybox in a small initramfs (guest/build_initramfs.sh;
# the packages are downloaded and unpacked, not installed). Cached in build/guest.
guest-initramfs: $(GUEST_INITRAMFS)
$(GUEST_INITRAMFS): guest/build_initramfs.sh guest/initramfs/init guest/initramfs/udhcpc.script | system-deps
	bash guest/build_initramfs.sh $(GUEST_DIR)/initramfs

# A Debian 12 cloud image with cloud-init (guest/build_image.sh: mmdebstrap from Debian's
# packages, about 1-2 minutes, 370 MB). Cached in build/guest; rebuilt when the script changes.
guest-image: $(GUEST_IMAGE)
$(GUEST_IMAGE): guest/build_image.sh | image-deps
	bash guest/build_image.sh $@

image-deps: system-deps
	@missing=""; for p in $(IMAGE_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

# The whole suite, the full boot of the Debian image included (it builds the image once: about a
# minute and 200 MB of Debian packages; the boot itself about two minutes under TCG). The tests
# that boot guests run beside the others, in a second pytest process (scripts/run_tests.sh).
test: install guest-initramfs guest-image test-clients
	$(BIN)/ruff check .
	$(BIN)/mypy
	PYTHON=$(BIN)/python scripts/run_tests.sh

# What the introspect's tests read the agent's pages with, as TF operators do: Debian's headless
# Chromium and its driver (no service, no background traffic: the tests run it inside a lab's
# namespace), and contrail-scrape from PyPI in a venv of its own (it pins old tqdm and prettytable).
BROWSER_PKGS := chromium chromium-driver
SCRAPE_VENV := build/scrape-venv
test-clients: system-deps
	@missing=""; for p in $(BROWSER_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	@test -x $(SCRAPE_VENV)/bin/contrail-scrape || { $(PYTHON) -m venv $(SCRAPE_VENV) && \
	  $(SCRAPE_VENV)/bin/python -m pip install -q contrail-scrape==0.1.13 2>&1 | grep -v "^WARNING: Location" || true; }
	@test -x $(SCRAPE_VENV)/bin/contrail-scrape

# Only the guests: the test initramfs on a tap, and the Debian image configured by cloud-init.
test-guests: install guest-initramfs guest-image
	$(BIN)/python -m pytest -q -ra -m guests tests

# Minutes of 16 VMs running cloud-init's metadata sequence; too long for CI (see docs/hostile-vms.md).
soak: install
	$(BIN)/python scripts/soak.py --vms $(SOAK_VMS) --nodes $(SOAK_NODES) --seconds $(SOAK_SECONDS) --datapath $(DATAPATH)

# Minutes of one VM fuzzing a live node (scapy's fuzz() on every protocol, malformed HTTP, MPLS over UDP
# from the fabric) while the other VMs read their metadata and ping, on both datapaths: FUZZ_SECONDS each,
# about 10 minutes in all; not in make test (see docs/reliability.md#fuzzing).
fuzz: install
	$(BIN)/python scripts/fuzz.py --seconds $(FUZZ_SECONDS) --datapath both --json benchmarks/results/fuzz.json

# A node of 16 VMs and a 3-node cloud run cloud-init's metadata requests and VM-to-VM streams while a
# dataplane worker, the proxy, the agent, nova-metadata and etcd are SIGKILLed and restarted, Nova is
# slowed and a cloud node is removed and added back: per fault the recovery time, the failures inside
# its window (none may be outside) and leaks (docs/reliability.md#chaos). CHAOS_DATAPATH=nfqueue|ebpf|both
# (both: 4-5.5 min); bounded at 15 min (SIGTERM removes the labs).
chaos: install
	timeout --foreground -k 60 900 $(BIN)/python scripts/chaos.py --datapath $(CHAOS_DATAPATH) --json benchmarks/results/chaos.json $(CHAOS_ARGS)

# How long a change of the global config takes to reach every agent of a 3-node cluster (100 changes).
cluster-latency: install
	$(BIN)/python benchmarks/cluster.py --nodes 3 --changes 100

# IPv6 beside IPv4 between two VMs, in each datapath (ratios IPv6 / IPv4).
bench-ipv6: install bench-deps
	$(BIN)/python benchmarks/ipv6.py --datapaths "$(DATAPATHS)"

# The benchmark suite beside its references (haproxy, kernel DNAT, nginx upstream); see benchmarks/run.py.
# DATAPATHS: which of the agent's datapaths to measure beside the references (both by default).
BENCH_ARGS ?= --repeat 3
DATAPATHS ?= nfqueue ebpf
bench: install bench-deps
	$(BIN)/python benchmarks/run.py --datapaths "$(DATAPATHS)" $(BENCH_ARGS)

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
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache build
