"""anomap: industrial visual anomaly detection (PatchCore, GLASS, PBAS, UniAD).

The public API stays small; heavy modules load only when used, so `import anomap` and
`anomap --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["GLASS", "PBAS", "PatchCore", "UniAD", "load", "__version__"]

_DETECTORS = {
    "PatchCore": "patchcore",
    "PBAS": "pbas",
    "GLASS": "glass",
    "UniAD": "uniad",
}


def __getattr__(name: str) -> Any:
    if name in _DETECTORS:
        from anomap.methods import get_method

        return get_method(_DETECTORS[name])
    if name == "load":
        from anomap.artifact import load

        return load
    raise AttributeError(f"module 'anomap' has no attribute {name!r}")
