"""Anomaly detection methods, each a Detector subclass, looked up by name."""

from __future__ import annotations

import importlib

from anomap.errors import AnomapError

METHODS: dict[str, str] = {
    "patchcore": "anomap.methods.patchcore:PatchCore",
    "pbas": "anomap.methods.pbas:PBAS",
    "glass": "anomap.methods.glass:GLASS",
    "uniad": "anomap.methods.uniad:UniAD",
}


def get_method(name: str) -> type:
    """The Detector class registered under `name`, imported on first use."""
    try:
        target = METHODS[name]
    except KeyError:
        raise AnomapError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
