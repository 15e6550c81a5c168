"""The suite's fixtures and its one root check.

* A test that runs in network namespaces is marked ``netns`` (pyproject.toml registers it): the
  mark alone skips it when the suite does not run as root, and a test that builds an emulated host
  without the mark is refused at collection.
* Emulated hosts come from fixture factories, taken down when their test (or module) is over,
  pass or fail: ``make_node(vms=N, ...)`` and ``make_cluster(nodes=3, vms=6, ...)`` for one test,
  ``make_shared_node`` and ``make_shared_cluster`` for the fixtures a module's tests share (such as
  ``host``, 2 VMs).  EmulatedHost is in tests/emulated_host.py.
* The datapath: the factories build their hosts in the ``datapath`` fixture's mode (agent.conf
  ``[FLOWS] datapath``), nfqueue unless the ``datapaths`` mark says otherwise.  A module (or a test)
  marked ``datapaths("nfqueue", "ebpf")`` runs each of its tests that builds a host once per mode,
  the mode in the test's id (``test_x[ebpf]``), all of one mode's first, so that a module's shared
  host is built once a mode (the first taken down before the second is built).  The closest mark
  wins: a test of such a module marked ``datapaths("nfqueue")`` runs in nfqueue mode only (it
  forwards nothing the other mode would do differently, or costs more than it adds there), and one
  marked ``datapaths("nfqueue", ebpf="why")`` is a test of one mode only: its ebpf run is skipped,
  with the reason.  A parameter of a test may carry the mark too (``pytest.param(...,
  marks=pytest.mark.datapaths(...))``), for that parameter's runs.
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
DATAPATHS = ("nfqueue", "ebpf")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "datapaths(*modes, **skipped): run the test's hosts in each of these datapaths (nfqueue, ebpf); "
        "a keyword mode=reason is skipped with the reason (see tests/conftest.py)",
    )  # fmt: skip


def _modes(mark: pytest.Mark, where: str) -> tuple[list[str], dict[str, str]]:
    """A ``datapaths`` mark's modes to run and modes to skip (with why), checked."""
    unknown = (set(mark.args) | set(mark.kwargs)) - set(DATAPATHS)
    if unknown or not mark.args and not mark.kwargs:
        raise pytest.UsageError("%s: datapaths(%s): the modes are %s" % (where, ", ".join(sorted(unknown)), ", ".join(DATAPATHS)))
    return [m for m in DATAPATHS if m in mark.args], {m: str(mark.kwargs[m]) for m in DATAPATHS if m in mark.kwargs}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that builds hosts, under a ``datapaths`` mark: once per mode the mark names, the
    modes always in one order (nfqueue's tests first)."""
    mark = metafunc.definition.get_closest_marker("datapaths")
    if mark is None or "datapath" not in metafunc.fixturenames:
        return
    run, skipped = _modes(mark, metafunc.definition.nodeid)
    metafunc.parametrize("datapath", [m for m in DATAPATHS if m in run or m in skipped], ids=str, indirect=True, scope="module")


def _datapath_of(item: pytest.Item) -> tuple[str, pytest.Mark] | None:
    """The mode of a test run once per mode, and the mark that says how: one on the test's
    parameter (``pytest.param(..., marks=pytest.mark.datapaths(...))``), else the closest."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "datapath" not in callspec.params:
        return None
    marks = [m for m in callspec.marks if m.name == "datapaths"] or [item.get_closest_marker("datapaths")]
    return callspec.params["datapath"], marks[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The netns mark implies the root check; an emulated host is built only by a netns test; a
    test's run in a mode its ``datapaths`` mark skips is skipped (with the mark's reason), and in a
    mode its parameter's mark leaves out, deselected."""
    unmarked = [item.nodeid for item in items if _BUILDERS & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("netns")]
    if unmarked:
        raise pytest.UsageError("these tests build emulated hosts but are not marked netns: %s" % ", ".join(unmarked))
    kept, left_out = [], []
    for item in items:
        how = _datapath_of(item)
        if how is not None:
            mode, mark = how
            run, skipped = _modes(mark, item.nodeid)
            if mode in skipped:
                item.add_marker(pytest.mark.skip(reason="%s datapath: %s" % (mode, skipped[mode])))
            elif mode not in run:
                left_out.append(item)
                continue
        kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("netns"):
                item.add_marker(pytest.mark.skip(reason=_NEEDS_ROOT))


@pytest.fixture(scope="module")
def datapath(request: pytest.FixtureRequest) -> str:
    """The datapath the factories build hosts in: the test's ``datapaths`` mode, else nfqueue."""
    return str(getattr(request, "param", "nfqueue"))


@pytest.fixture
def make_node(datapath: str) -> Iterator[Callable[..., EmulatedHost]]:
    """``make_node(vms=2, **options)``: a compute node of the test's own, removed after it."""
    b = Builder(datapath)
    yield b.node
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture
def make_cluster(datapath: str) -> Iterator[Callable[..., EmulatedHost]]:
    """``make_cluster(nodes=3, vms=6, **options)``: a cloud of the test's own, removed after it."""
    b = Builder(datapath)
    yield b.cluster
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture(scope="module")
def make_shared_node(datapath: str) -> Iterator[Callable[..., EmulatedHost]]:
    """make_node for a fixture the module's tests share: removed after the module (or, in a module
    of both datapaths, after its tests of the mode)."""
    b = Builder(datapath)
    yield b.node
    b.down_all()  # after the test (or module), pass or fail


@pytest.fixture(scope="module")
def make_shared_cluster(datapath: str) -> Iterator[Callable[..., EmulatedHost]]:
    """make_cluster for a fixture the module's tests share: removed after the module (or its mode)."""
    b = Builder(datapath)
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
