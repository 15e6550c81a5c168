"""The suite's fixtures and its one root check.

* A test that runs in network namespaces is marked ``netns`` (pyproject.toml registers it): the
  mark alone skips it when the suite does not run as root, and a test that builds an emulated host
  without the mark is refused at collection.
* Emulated hosts come from fixture factories, taken down when their test (or module) is over,
  pass or fail: ``make_node(vms=N, ...)`` and ``make_cluster(nodes=3, vms=6, ...)`` for one test,
  ``make_shared_node`` and ``make_shared_cluster`` for the fixtures a module's tests share (such as
  ``host``, 2 VMs).  EmulatedHost is in tests/emulated_host.py.
* The guest builds (``guest_initramfs``, ``debian_image``): a test is skipped without them, or fails
  under make test (VROUTER_REQUIRE_GUESTS=1).
* A last sweep at the end of the session removes any namespace of this session's prefixes still
  present.

Helpers shared by test modules are in tests/helpers.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.emulated_host import Builder, EmulatedHost
from tests.helpers import GUEST_BUILD, PREFIXES, guest_build

_NEEDS_ROOT = "namespace tests need root (make test runs them as root)"
_BUILDERS = {"make_node", "make_cluster", "make_shared_node", "make_shared_cluster"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The netns mark implies the root check; an emulated host is built only by a netns test."""
    unmarked = [item.nodeid for item in items if _BUILDERS & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("netns")]
    if unmarked:
        raise pytest.UsageError("these tests build emulated hosts but are not marked netns: %s" % ", ".join(unmarked))
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("netns"):
                item.add_marker(pytest.mark.skip(reason=_NEEDS_ROOT))


@pytest.fixture
def make_node() -> Iterator[Callable[..., EmulatedHost]]:
    """``make_node(vms=2, **options)``: a compute node of the test's own, removed after it."""
    b = Builder()
    yield b.node
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., EmulatedHost]]:
    """``make_cluster(nodes=3, vms=6, **options)``: a cloud of the test's own, removed after it."""
    b = Builder()
    yield b.cluster
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture(scope="module")
def make_shared_node() -> Iterator[Callable[..., EmulatedHost]]:
    """make_node for a fixture the module's tests share: removed after the module."""
    b = Builder()
    yield b.node
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture(scope="module")
def make_shared_cluster() -> Iterator[Callable[..., EmulatedHost]]:
    """make_cluster for a fixture the module's tests share: removed after the module."""
    b = Builder()
    yield b.cluster
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture(scope="module")
def host(make_shared_node: Callable[..., EmulatedHost]) -> EmulatedHost:
    """One compute node of 2 VMs that a module's tests share."""
    return make_shared_node(vms=2)


@pytest.fixture(scope="session")
def guest_initramfs() -> Path:
    """The test guest's directory (its kernel and initramfs): make guest-initramfs."""
    guest_build(GUEST_BUILD / "initramfs" / "initramfs.cpio.gz", "make guest-initramfs builds the test guest (make test does)")
    return GUEST_BUILD / "initramfs"


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The Debian cloud image: make guest-image."""
    return guest_build(GUEST_BUILD / "debian12.qcow2", "make guest-image builds the Debian image (make test and make test-guests do)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last resort: remove namespaces of this session's prefixes that something left behind."""
    if not PREFIXES or os.geteuid() != 0:
        return
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in listed:
        if any(name.startswith(p + "-") for p in PREFIXES):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
