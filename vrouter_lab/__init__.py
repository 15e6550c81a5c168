"""vrouter-lab: boot cloud images on an emulated Tungsten Fabric compute node and judge the boot.

``vrouter-lab check IMAGE`` (``vrouter_lab.cli``) and the Python API (``vrouter_lab.api``: ``Lab``,
``Guest``) that the pytest plugin (``vrouter_lab.pytest_plugin``) hands to tests.  The verdict is
pure (``vrouter_lab.verdict`` over ``vrouter_lab.evidence``); gathering it is ``vrouter_lab.gather``.
"""
