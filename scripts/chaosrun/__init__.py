"""The chaos soak's parts (``scripts/chaos.py``, ``make chaos``).

* ``load``: the process that plays the VMs: cloud-init's metadata sequence in a loop from each VM,
  TCP and UDP streams between VMs, every request and exchange a timestamped sample;
* ``samples``: the samples as the driver sees them (the load process's handle), and the windows:
  when, after a fault, every VM was served again, and which failures lie inside;
* ``labs``: the single node and the 3-node cloud, built and removed with ``topology.lab``, and the
  node that is added back to the cloud;
* ``faults``: what is done to them, one fault at a time;
* ``leaks``: what each node holds (processes, taps, queues, nftables, BPF objects, etcd keys,
  counters), and what must be gone;
* ``run``: one datapath's soak from up to down; ``report``: the table.
"""
