"""The embedded backbone must carry real ImageNet weights, loaded by position correctly."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from anomap.backbones import get_spec, load_backbone
from anomap.backbones.extractor import match_state_dict, read_state_dict
from anomap.errors import WeightsError

skimage_data = pytest.importorskip("skimage.data")


def classify(spec, image: np.ndarray) -> int:
    import timm

    model = timm.create_model(spec.timm_name, pretrained=False).eval()
    weights = read_state_dict(spec.packaged_weights())
    model.load_state_dict(match_state_dict(weights, model.state_dict(), "package"))
    pil = Image.fromarray(image).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    with torch.no_grad():
        return int(model(x[None]).argmax())


def test_lite0_classifies_photos():
    spec = get_spec("efficientnet_lite0")
    assert classify(spec, skimage_data.chelsea()) in (281, 282, 285)  # tabby/tiger/Egyptian cat
    assert classify(spec, skimage_data.coffee()) == 967  # espresso


def test_extractor_is_frozen_with_mid_stages():
    extractor = load_backbone("efficientnet_lite0")
    assert extractor.strides == (8, 16) and extractor.channels == (40, 112)
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.model.training
    maps = extractor(torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 40, 8, 8), (1, 112, 4, 4)]
    assert extractor.weights_id.startswith("sha256:")


def test_no_weights_is_a_clear_error():
    with pytest.raises(WeightsError, match="--weights FILE.*--download"):
        load_backbone("resnet18")


def test_local_weights_file_by_name(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    extractor = load_backbone("resnet18", weights=path)
    expected = model.state_dict()["layer2.0.conv1.weight"]
    torch.testing.assert_close(extractor.model.state_dict()["layer2.0.conv1.weight"], expected)


def test_wrong_shapes_are_refused(tmp_path):
    import timm

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="conv1.weight has shape"):
        load_backbone("resnet18", weights=path)


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_backbone("resnet18", weights=path)
