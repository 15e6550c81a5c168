"""The flow table: keys, entries, actions and flags, laid out like the vRouter's. No I/O."""
