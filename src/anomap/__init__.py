"""anomap: industrial visual anomaly detection (PatchCore, GLASS, PBAS, UniAD).

The public API stays small; heavy modules load only when used, so `import anomap` and
`anomap --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["PatchCore", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "PatchCore":
        from anomap.methods.patchcore import PatchCore

        return PatchCore
    if name == "load":
        from anomap.artifact import load

        return load
    raise AttributeError(f"module 'anomap' has no attribute {name!r}")
