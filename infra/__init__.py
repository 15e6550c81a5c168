"""What the node's parts stand on and no part owns: the etcd configuration store, and the node's child processes."""
