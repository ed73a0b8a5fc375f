"""Frozen pretrained feature extractors and the registry of where their weights come from."""

from anomap.backbones.extractor import FeatureExtractor, load_backbone
from anomap.backbones.registry import BACKBONES, DEFAULT_BACKBONE, BackboneSpec, get_spec

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "FeatureExtractor",
    "get_spec",
    "load_backbone",
]
