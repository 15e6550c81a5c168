"""The messages between the node's processes, one module per seam: ``control`` (the CLI and the
agent, over the control socket), ``proxy`` (the agent and its metadata proxy process), and
``wire`` (the control socket's JSON lines)."""
