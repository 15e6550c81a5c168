"""The ``vrouter`` command line, one module per command family.

Each module adds its commands' parsers (``add_parsers``), runs them (``run_*``, the
function a parser's ``func`` default names) and writes their output; ``vrouter.cli``
builds the top-level parser from them and dispatches.  Two modules serve them all:
``target`` (which agent a command acts on, and a request to it) and ``output`` (a
result printed as text or JSON, and the ``UsageError`` a command raises for a mistake
the user can correct).  The vRouter utilities' own formats and readers live in
``vrouter.tools``.

    daemons     vrouter agent, vrouter nova-metadata
    port        vrouter port add|del|list
    linklocal   vrouter linklocal add|del|list|export|import
    network     vrouter network add|del|list
    flow        vrouter flow -l|--match|-r
    vif         vrouter vif --list|--get N, vrouter dropstats
    overlay     vrouter rt --dump VRF, nh --list|--get ID, mpls --dump
    status      vrouter status
    introspect  vrouter introspect URL-PATH
    metadata    vrouter metadata log, vrouter metadata fault add|list|del
    instance    vrouter instance set
    vifdump     vrouter vifdump -i N
"""
