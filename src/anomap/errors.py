"""Errors anomap raises for bad user input; the CLI prints them without a traceback."""

from __future__ import annotations


class AnomapError(Exception):
    """Base class: a problem the user can fix, described in plain words."""


class DataError(AnomapError):
    """A dataset, image or mask is missing, unreadable or laid out wrongly."""


class WeightsError(AnomapError):
    """Backbone weights are missing, mismatched or unavailable offline."""


class ArtifactError(AnomapError):
    """A saved model is truncated, tampered with, or from an incompatible version."""


class ConfigError(AnomapError, ValueError):
    """A method setting is out of range (a ValueError too, as scikit-learn raises)."""
