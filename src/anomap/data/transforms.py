"""Image and mask preprocessing: resize, optional centre crop, normalise; masks follow the image."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """`resize` as an int scales the shorter side to it (aspect kept, as torchvision's Resize);
    as a pair (h, w) it resizes to exactly that size. `crop` centre-crops a square when set."""

    resize: int | tuple[int, int] = 256
    crop: int | None = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def output_size(self) -> tuple[int, int]:
        """(h, w) of the tensors this produces when it does not depend on the input's aspect."""
        if self.crop is not None:
            return (self.crop, self.crop)
        if isinstance(self.resize, int):
            raise ValueError("output size depends on the image aspect without a crop")
        return (int(self.resize[0]), int(self.resize[1]))

    def _target_size(self, width: int, height: int) -> tuple[int, int]:
        """PIL (w, h) after the resize step."""
        if isinstance(self.resize, int):
            short = min(width, height)
            if width <= height:
                return self.resize, max(1, int(self.resize * height / short))
            return max(1, int(self.resize * width / short)), self.resize
        return int(self.resize[1]), int(self.resize[0])

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        if self.crop is None:
            return None
        left = int(round((width - self.crop) / 2.0))
        top = int(round((height - self.crop) / 2.0))
        return left, top, left + self.crop, top + self.crop

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize (bilinear) and crop an RGB PIL image without normalising it."""
        size = self._target_size(*image.size)
        out = image.resize(size, Image.BILINEAR) if size != image.size else image
        box = self._crop_box(*out.size)
        return out.crop(box) if box is not None else out

    def image(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised float tensor 3×H×W."""
        return self.normalize(self.geometry(image))

    def normalize(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image already at its final size -> normalised float tensor 3×H×W."""
        arr = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """Binary H×W array -> uint8 tensor 1×H'×W' with the same geometry as `image`."""
        pil = Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L")
        size = self._target_size(*pil.size)
        out = pil.resize(size, Image.NEAREST) if size != pil.size else pil
        box = self._crop_box(*out.size)
        out = out.crop(box) if box is not None else out
        return torch.from_numpy((np.asarray(out) > 127).astype(np.uint8))[None]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        resize = data["resize"]
        return cls(
            resize=tuple(resize) if isinstance(resize, list) else int(resize),
            crop=data.get("crop"),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
        )
