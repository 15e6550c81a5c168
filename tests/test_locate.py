"""Which agent a tool acts on: --prefix P run inside a node's namespace (vrouter.tools.locate), no root."""

from __future__ import annotations

import pytest

from vrouter.cli import main
from vrouter.tools import locate


def test_the_namespace_names_the_node_of_its_own_lab_only():
    assert locate.node_in_namespace("cl", "cl-compute2") == 2
    assert locate.node_in_namespace("cl", "cl-compute12") == 12
    assert locate.node_in_namespace("cl", "cl-compute") is None  # a single node: --prefix P is that node already
    assert locate.node_in_namespace("cl", "other-compute2") is None  # another lab's node
    assert locate.node_in_namespace("c", "cl-compute2") is None  # a prefix is the whole name before -compute
    assert locate.node_in_namespace("cl", "cl-vm2") is None
    assert locate.node_in_namespace("cl", "cl-fabric") is None
    assert locate.node_in_namespace("cl", "") is None  # outside any named namespace


@pytest.fixture
def labs(tmp_path, monkeypatch):
    """A state root with cluster ``cl`` (nodes 1 to 3), cluster ``cm`` (nodes 1, 2) and single node ``one``, all up."""
    monkeypatch.setenv("VROUTER_STATE_ROOT", str(tmp_path))
    monkeypatch.delenv("VROUTER_STATE_DIR", raising=False)
    for lab, nodes in (("cl", 3), ("cm", 2)):
        for n in range(1, nodes + 1):
            (tmp_path / lab / ("compute%d" % n)).mkdir(parents=True)
            (tmp_path / lab / ("compute%d" % n) / "agent.sock").touch()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "agent.sock").touch()
    return tmp_path


def inside(monkeypatch, namespace):
    monkeypatch.setattr(locate, "current_namespace", lambda: namespace)


def test_prefix_inside_a_node_of_that_cluster_is_that_node(labs, monkeypatch):
    inside(monkeypatch, "cl-compute2")
    assert locate.state_dir(None, "cl") == str(labs / "cl" / "compute2")
    assert locate.state_dir(None, None) == str(labs / "cl" / "compute2")  # as without --prefix


def test_node_wins_over_the_namespace(labs, monkeypatch):
    inside(monkeypatch, "cl-compute2")
    assert locate.state_dir(None, "cl", node=3) == str(labs / "cl" / "compute3")
    assert locate.state_dir(None, None, node=1) == str(labs / "cl" / "compute1")
    assert locate.state_dir("/elsewhere", "cl") == "/elsewhere"  # and --state-dir over both


def test_another_labs_prefix_inside_a_node_acts_on_that_lab_as_before(labs, monkeypatch):
    inside(monkeypatch, "cl-compute2")
    assert locate.state_dir(None, "one") == str(labs / "one")
    assert locate.state_dir(None, "cm", node=2) == str(labs / "cm" / "compute2")
    with pytest.raises(locate.Ambiguous, match=r"prefix cm is a cluster of 2 nodes: say which with --node I \(1, 2\)"):
        locate.state_dir(None, "cm")  # cm's node 2 is not the namespace's node 2


def test_prefix_of_a_cluster_outside_its_nodes_still_asks_which(labs, monkeypatch):
    for ns in ("", "one-compute", "cl-fabric", "cl-vm1"):
        inside(monkeypatch, ns)
        with pytest.raises(locate.Ambiguous, match=r"prefix cl is a cluster of 3 nodes: say which with --node I \(1, 2, 3\)"):
            locate.state_dir(None, "cl")


def test_a_node_the_cluster_no_longer_has_is_named(labs, monkeypatch):
    inside(monkeypatch, "cl-compute7")
    with pytest.raises(locate.Ambiguous, match=r"prefix cl has no node 7 \(its nodes: 1, 2, 3\)"):
        locate.state_dir(None, "cl")


def test_the_agent_itself_does_not_take_its_node_from_the_namespace(labs, monkeypatch):
    inside(monkeypatch, "cl-compute2")
    with pytest.raises(locate.Ambiguous, match="cluster of 3 nodes"):
        locate.state_dir(None, "cl", single_node=False)


def test_the_command_line_inside_a_node_with_prefix_asks_that_nodes_agent(labs, monkeypatch, capsys):
    """The issue's case, as far as it goes without root: the request goes to node 2's socket."""
    inside(monkeypatch, "cl-compute2")
    assert main(["linklocal", "add", "--linklocal_service_name", "ntp", "--linklocal_service_ip", "169.254.1.1",
                 "--linklocal_service_port", "123", "--ipfabric_service_ip", "10.0.0.1", "--ipfabric_service_port", "123",
                 "--prefix", "cl"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "cl/compute2/agent.sock" in err and "say which" not in err, err
    inside(monkeypatch, "")
    assert main(["status", "--prefix", "cl"]) == 1
    assert "vrouter status: prefix cl is a cluster of 3 nodes: say which with --node I (1, 2, 3)" in capsys.readouterr().err
