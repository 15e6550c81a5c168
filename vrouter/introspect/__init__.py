"""The agent introspect (Sandesh over HTTP, port 8085): the documents the real contrail-vrouter-agent serves."""
