"""The embedded backbone must carry real ImageNet weights, loaded by position correctly."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from anomap.backbones import get_spec, load_backbone
from anomap.backbones.extractor import match_state_dict, read_state_dict
from anomap.backbones.folding import fold_batch_norms, folded_copy
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


def test_batch_norms_fold_into_convolutions_with_the_same_features():
    folded = load_backbone("efficientnet_lite0")
    plain = load_backbone("efficientnet_lite0", fold_batch_norm=False)
    assert folded.folded_batch_norms == 48 and plain.folded_batch_norms == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for ours, reference in zip(folded(images), plain(images), strict=True):
            torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


class Misordered(nn.Module):
    """Registers a BatchNorm after a convolution whose output it never normalises."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return [self.norm(self.conv(x))]


def test_a_fold_that_changes_outputs_is_not_kept():
    model = Misordered()
    assert fold_batch_norms(copy.deepcopy(model)) == 1  # the naive rule would fold it
    kept, count = folded_copy(model)
    assert kept is model and count == 0


def test_remembering_runs_each_batch_once_per_dtype():
    extractor = load_backbone("efficientnet_lite0")
    calls = []
    extractor.model.register_forward_hook(lambda *args: calls.append(1))
    batches = [torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)]
    expected = [extractor(b) for b in batches]
    memories: list[dict] = [{}, {}]
    calls.clear()
    for _ in range(3):
        for batch, memory, want in zip(batches, memories, expected, strict=True):
            with extractor.remembering(batch, memory):
                got = extractor(batch)
                extractor(batch[:1])  # a slice shares the address, not the identity
                extractor(batches[1] if batch is batches[0] else batches[0])  # another batch
            assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))
    assert len(calls) == 2 + 3 * 2 * 2  # each batch once; the slice and the other every time
    with extractor.remembering(batches[0], memories[0]), torch.autocast("cpu", torch.bfloat16):
        reduced = extractor(batches[0])
    assert reduced[0].dtype == torch.bfloat16 and len(calls) == 15  # its own entry
    calls.clear()
    extractor(batches[0])  # outside the block, nothing is remembered
    assert len(calls) == 1
