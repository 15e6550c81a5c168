"""What a running agent has made, as the operations, the metrics and the services read it.

``Agent.run`` builds it once everything is up; the parts keep their own state
(the node's configuration in ``state``, the dataplane's in ``dp`` and its
workers) and ``Node`` only gathers them, so that each reader takes what it
needs and nothing takes the agent itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.core.dataplane import Dataplane
from dataplane.linux.workers import WorkerPool
from vrouter.agent.cluster import Cluster
from vrouter.agent.config import AgentConfig
from vrouter.agent.ksync import KSync
from vrouter.agent.paths import StatePaths
from vrouter.agent.queues import VmQueues
from vrouter.agent.rate import SetupRate
from vrouter.agent.state import NodeState
from vrouter.introspect.traces import ConfigTrace
from vrouter.services.guests import GuestServices
from vrouter.services.metadata.supervisor import ProxyProcess


@dataclass
class Node:
    cfg: AgentConfig
    paths: StatePaths
    started: float  # time.time() at start
    vhost_ip: str
    state: NodeState
    dp: Dataplane  # worker 0's, this process's
    pool: WorkerPool  # the other workers
    ksync: KSync
    queues: VmQueues
    proxy: ProxyProcess
    services: GuestServices
    setup_rate: SetupRate
    config_trace: ConfigTrace  # the changes of the state, for the introspect's Config trace
    cluster: Cluster | None = None  # with [ETCD] servers: the cloud's configuration
