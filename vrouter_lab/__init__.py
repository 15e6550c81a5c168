"""vrouter-lab: boot cloud images on an emulated Tungsten Fabric compute node and judge the boot.

``vrouter-lab check IMAGE`` (``vrouter_lab.cli``) and the Python API (``vrouter_lab.api``: ``Lab``,
``Guest``) that the pytest plugin (``vrouter_lab.pytest_plugin``) hands to tests.  The verdict is
pure (``vrouter_lab.verdict`` over ``vrouter_lab.evidence``); gathering it is ``vrouter_lab.gather``.
"""

from typing import Any

__all__ = ["Lab", "LabGuest", "Verdict"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - the API's classes, imported when first asked for
    """``from vrouter_lab import Lab``: the API, loaded only then (the pytest plugin stays light)."""
    if name in __all__:
        from vrouter_lab import api

        return getattr(api, name)
    raise AttributeError(name)
