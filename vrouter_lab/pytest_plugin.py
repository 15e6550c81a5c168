"""vrouter-lab's pytest plugin, registered by the ``pytest11`` entry point: installing the project is enough.

Fixtures:

* ``vrouter_lab_node`` (session): a ``vrouter_lab.Lab`` node of its own (one namespace VM to log in
  from), built at first use and removed at the end of the session, whatever happens; with
  ``--vrouter-lab-prefix P`` the node of prefix P, which must be up already (then only the guests
  the tests booted are removed).
* ``lab`` (per test): that node, with every guest the test booted removed after it, pass or fail.
  ``lab.boot(image, user_data=..., ssh_key=..., config_drive=...)`` returns a guest with
  ``wait_for_cloud_init(timeout)`` (the verdict of ``vrouter-lab check``), ``ssh(cmd)``,
  ``console()``, ``metadata_log()``, ``fault(...)``, ``set_metadata(...)``, ``reboot()`` and
  ``rebuild(user_data=...)``.
* ``make_lab`` (per test): ``make_lab(vms=2, networks=2)`` builds nodes of the test's own, with
  so many namespace VMs and networks, removed after the test whatever happens.
* ``lab_image``: the image given by ``--vrouter-lab-image FILE`` (or ``$VROUTER_LAB_IMAGE``); a test
  that asks for it is skipped when there is none.

The tests need root (network namespaces); without it, a test that asks for a node is skipped.
Options: ``--vrouter-lab-image``, ``--vrouter-lab-prefix``, ``--vrouter-lab-datapath nfqueue|ebpf``.
Nothing here is imported before a fixture is used, so the plugin costs nothing to other suites.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from vrouter_lab.api import Lab


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vrouter-lab", "vrouter-lab: cloud images on an emulated Tungsten Fabric compute node")
    group.addoption("--vrouter-lab-image", metavar="FILE", help="the image for the lab_image fixture (or $VROUTER_LAB_IMAGE)")
    group.addoption("--vrouter-lab-prefix", metavar="P", help="boot on the node of prefix P, which is up (default: a node of the session's own)")
    group.addoption("--vrouter-lab-datapath", default="nfqueue", choices=["nfqueue", "ebpf"], help="the session node's datapath")


@pytest.fixture(scope="session")
def vrouter_lab_node(request: pytest.FixtureRequest) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("vrouter-lab needs root (network namespaces)")
    from vrouter_lab.api import Lab

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # CI cancels with SIGTERM: the finalizers still run

        def terminated(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt("signal %d" % signum)

        signal.signal(signal.SIGTERM, terminated)
    prefix = request.config.getoption("--vrouter-lab-prefix")
    node = Lab.attach(prefix) if prefix else Lab.up(datapath=request.config.getoption("--vrouter-lab-datapath"))
    try:
        yield node
    finally:
        node.down()


@pytest.fixture
def lab(vrouter_lab_node: Lab) -> Iterator[Lab]:
    before = len(vrouter_lab_node.booted)
    try:
        yield vrouter_lab_node
    finally:
        with vrouter_lab_node.lock:
            booted, vrouter_lab_node.booted = vrouter_lab_node.booted[before:], vrouter_lab_node.booted[:before]
        errors = []
        for guest in booted:
            try:
                guest.remove()
            except Exception as e:  # noqa: BLE001 - the others are removed all the same
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """``make_lab(vms=2, networks=2, datapath="ebpf")``: a node of the test's own, with so many
    namespace VMs and networks, removed after the test whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("vrouter-lab needs root (network namespaces)")
    from vrouter_lab.api import Lab

    made: list[Lab] = []

    def make(**options: Any) -> Lab:
        options.setdefault("datapath", request.config.getoption("--vrouter-lab-datapath"))
        made.append(Lab.up(**options))
        return made[-1]

    try:
        yield make
    finally:
        for node in reversed(made):
            node.down()


@pytest.fixture
def lab_image(request: pytest.FixtureRequest) -> str:
    image = request.config.getoption("--vrouter-lab-image") or os.environ.get("VROUTER_LAB_IMAGE")
    if not image:
        pytest.skip("no image: pass --vrouter-lab-image FILE (or set VROUTER_LAB_IMAGE)")
    if not os.path.exists(image):
        pytest.fail("--vrouter-lab-image %s: no such file" % image)
    return os.path.abspath(image)
