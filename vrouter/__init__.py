"""The vRouter agent emulation: configuration, ports, link-local services, the metadata proxy,
the Nova-compatible metadata API, the control socket and the `vrouter` command line."""

__version__ = "0.1.0"
