"""ImageDataset items and the up-front validation of sample files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from anomap.data.dataset import ImageDataset, validate_samples
from anomap.data.samples import Sample
from anomap.data.transforms import Preprocess
from anomap.errors import DataError

PRE = Preprocess(resize=(16, 16), crop=None)


def _img(path: Path, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 200 if mode != "RGB" else (200, 100, 50)).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (24, 20)) -> Path:
    arr = np.zeros(size[::-1], dtype=np.uint8)
    arr[:, : size[0] // 2] = 255  # left half
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _truncated(path: Path) -> Path:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_items(tmp_path):
    good = Sample(_img(tmp_path / "good.png"), "cat")
    bad = Sample(_img(tmp_path / "bad.jpg"), "cat", "crack", _mask(tmp_path / "bad_mask.png"))
    gray = Sample(_img(tmp_path / "gray.png", mode="L"), "cat")
    ds = ImageDataset([good, bad, gray], PRE)
    assert len(ds) == 3

    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (1, 16, 16)
    assert item["mask"].sum() == 0 and item["label"] == 0 and item["index"] == 0

    item = ds[1]
    assert item["label"] == 1 and item["index"] == 1
    assert item["mask"][0, :, :8].all() and not item["mask"][0, :, 8:].any()

    assert ds[2]["image"].shape == (3, 16, 16)
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]


def test_zero_mask_follows_aspect_dependent_size(tmp_path):
    sample = Sample(_img(tmp_path / "wide.png", size=(40, 20)), "cat")
    item = ImageDataset([sample], Preprocess(resize=10, crop=None))[0]
    assert item["image"].shape == (3, 10, 20) and item["mask"].shape == (1, 10, 20)


def test_dataloader_batches(tmp_path):
    samples = [Sample(_img(tmp_path / f"{i}.png"), "cat") for i in range(3)]
    batch = next(iter(DataLoader(ImageDataset(samples, PRE), batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["index"].tolist() == [0, 1, 2]


def test_item_errors_name_the_file(tmp_path):
    bad = Sample(_truncated(tmp_path / "cut.png"), "cat")
    with pytest.raises(DataError, match=r"cut\.png: the file is corrupt or truncated"):
        ImageDataset([bad], PRE)[0]
    wrong = Sample(
        _img(tmp_path / "a.png"), "cat", "crack", _mask(tmp_path / "a_mask.png", size=(12, 10))
    )
    with pytest.raises(DataError, match=r"a_mask\.png is 12x10 .* its image is 24x20"):
        ImageDataset([wrong], PRE)[0]


def test_validate_samples_ok(tmp_path):
    samples = [
        Sample(_img(tmp_path / "a.png"), "cat"),
        Sample(_img(tmp_path / "b.png"), "cat", "crack", _mask(tmp_path / "b_mask.png")),
    ]
    validate_samples(samples)


def test_validate_samples_lists_all_problems(tmp_path):
    (tmp_path / "junk.png").write_text("not an image")
    samples = [
        Sample(_img(tmp_path / "ok.png"), "cat"),
        Sample(tmp_path / "gone.png", "cat"),
        Sample(tmp_path / "junk.png", "cat"),
        Sample(_img(tmp_path / "m.png"), "cat", "crack", _mask(tmp_path / "m_mask.png", (8, 8))),
        Sample(_img(tmp_path / "n.png"), "cat", "crack", tmp_path / "n_mask.png"),
    ]
    with pytest.raises(DataError) as info:
        validate_samples(samples)
    msg = str(info.value)
    assert msg.startswith("4 of 5 sample(s) have problems")
    assert "image file not found" in msg and "gone.png" in msg
    assert "junk.png: not a recognised image format" in msg
    assert "m_mask.png is 8x8" in msg and "m.png is 24x20" in msg
    assert "mask file not found" in msg and "n_mask.png" in msg
    assert "ok.png" not in msg
    validate_samples(samples[:1] + samples[3:4], check_masks=False)


def test_validate_samples_caps_the_list(tmp_path):
    samples = [Sample(tmp_path / f"missing_{i:02d}.png", "cat") for i in range(25)]
    with pytest.raises(DataError) as info:
        validate_samples(samples)
    msg = str(info.value)
    assert "25 of 25" in msg and "missing_19.png" in msg and "missing_20.png" not in msg
    assert "... and 5 more" in msg
