"""Packets in and out: parsing, NAT rewriting, the vif table, the NFQUEUE loop, the nftables table."""
