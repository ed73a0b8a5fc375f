"""Model files: round trip, no pickle, and clear errors for damaged or foreign files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from anomap.artifact import FORMAT_VERSION, read_artifact, write_artifact
from anomap.errors import ArtifactError


def test_round_trip_and_atomic(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"bank": torch.randn(5, 3)}
    write_artifact(path, tensors, {"method": "x"})
    loaded, meta = read_artifact(path)
    assert torch.equal(loaded["bank"], tensors["bank"])
    assert meta["method"] == "x" and meta["format_version"] == FORMAT_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_truncated_file(tmp_path):
    path = tmp_path / "m.safetensors"
    write_artifact(path, {"bank": torch.randn(50, 8)}, {"method": "x"})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifact(path)


def test_tampered_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    write_artifact(path, {"bank": torch.zeros(50, 8)}, {"method": "x"})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="integrity"):
        read_artifact(path)


def test_foreign_and_future_files(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(ArtifactError, match="no anomap metadata"):
        read_artifact(plain)
    future = tmp_path / "future.safetensors"
    meta = {"format": "anomap-model", "format_version": 99, "anomap_version": "9.0"}
    save_file({"a": torch.zeros(2)}, str(future), metadata={"anomap": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="format 99"):
        read_artifact(future)


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    torch.save({"bank": torch.zeros(2)}, path)
    with pytest.raises(ArtifactError):
        read_artifact(path)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        read_artifact(tmp_path / "nope.safetensors")
