"""Export to ONNX and TorchScript: parity with PyTorch on real images, and a sidecar that is checked, never run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from scipy.special import softmax
from sklearn.datasets import load_digits

from datamodules.transforms import Preprocessing
from inference.export import ExportedClassifier, export_classifier
from inference.sidecar import SidecarError, read_sidecar, sidecar_path

SIZE = 32
CLASSES = [f"digit_{i}" for i in range(10)]


def _digit_images(model: torch.nn.Module, count: int = 200) -> tuple[torch.Tensor, torch.Tensor, Preprocessing]:
    """Real 8x8 digits enlarged to the model input and normalised with the model's own mean and std."""
    config = timm.data.resolve_model_data_config(model)
    pre = Preprocessing.resolve(config, image_size=SIZE)
    digits = load_digits()
    images = []
    for pixels in digits.images[:count]:
        gray = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        rgb = np.asarray(gray.convert("RGB"), dtype=np.float32) / 255
        images.append((rgb - np.array(pre.mean)) / np.array(pre.std))
    batch = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32))
    return batch, torch.from_numpy(digits.target[:count]), pre


@pytest.fixture(scope="module", params=["test_efficientnet", "resnet10t"])
def trained(request) -> tuple[torch.nn.Module, torch.Tensor, Preprocessing]:
    """A tiny timm model trained for a few steps, so its probabilities are far from uniform."""
    torch.manual_seed(0)
    model = timm.create_model(request.param, pretrained=False, num_classes=len(CLASSES))
    images, targets, pre = _digit_images(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        batch = slice((step * 32) % 160, (step * 32) % 160 + 32)
        loss = torch.nn.functional.cross_entropy(model(images[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, images, pre


@pytest.mark.parametrize("model_format", ["onnx", "torchscript"])
def test_exported_probabilities_match_pytorch(tmp_path, trained, model_format):
    model, images, pre = trained
    temperature = 1.7
    model.eval()
    with torch.no_grad():
        expected = softmax(model(images).double().numpy() / temperature, axis=1)
    assert expected.max(axis=1).mean() > 0.3  # far from uniform (0.1): the comparison means something
    model.train()  # export must not depend on, nor change, the caller's mode
    path = tmp_path / ("model.onnx" if model_format == "onnx" else "model.pt")
    export_classifier(
        model, path, model_format=model_format, classes=CLASSES, preprocessing=pre, temperature=temperature
    )
    assert model.training
    model.eval()
    exported = ExportedClassifier(path, threads=1)
    for rows in (slice(0, 1), slice(1, 8), slice(None)):  # batch sizes other than the export's
        delta = np.abs(exported.probabilities(images[rows]) - expected[rows]).max()
        assert delta <= 1e-4, f"{model_format}: max |delta probability| {delta:.2e}"
    assert exported.logits(images[:3]).shape == (3, len(CLASSES))
    with pytest.raises(ValueError, match="images must be N x 3 x 32 x 32"):
        exported.logits(np.zeros((2, 3, 64, 64), dtype=np.float32))


def test_sidecar_records_everything_and_reads_back(tmp_path, trained):
    model, _, pre = trained
    path = tmp_path / "model.onnx"
    export_classifier(
        model,
        path,
        model_format="onnx",
        classes=CLASSES,
        preprocessing=pre,
        temperature=1.3,
        thresholds={"digit_0": 0.8, "digit_1": math.inf},
        blocked_classes=["digit_9"],
        source_checkpoint="${oc.env:HOME}/run/best.ckpt",  # stays a plain string: never resolved
    )
    data = json.loads(sidecar_path(path).read_text())
    assert data["format_version"] == 1 and data["model_file"] == "model.onnx"
    assert data["preprocessing"] == {
        "input_size": [SIZE, SIZE],
        "crop_pct": pre.crop_pct,
        "interpolation": pre.interpolation,
        "mean": list(pre.mean),
        "std": list(pre.std),
    }
    assert data["thresholds"] == {"digit_0": 0.8, "digit_1": None}
    sidecar = read_sidecar(sidecar_path(path))
    assert sidecar.thresholds == {"digit_0": 0.8, "digit_1": math.inf}
    assert sidecar.blocked_classes == ("digit_9",) and sidecar.temperature == 1.3
    assert sidecar.source_checkpoint == "${oc.env:HOME}/run/best.ckpt"
    assert sidecar.classes == tuple(CLASSES)


def _valid() -> dict:
    return {
        "format_version": 1,
        "model_format": "onnx",
        "model_file": "model.onnx",
        "classes": ["a", "b"],
        "preprocessing": {
            "input_size": [8, 8],
            "crop_pct": 0.9,
            "interpolation": "bicubic",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "temperature": 1.0,
        "thresholds": {"a": 0.5},
        "blocked_classes": [],
        "source_checkpoint": "best.ckpt",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version 2 is not supported"),
        ({"model_format": "pickle"}, "model_format must be one of"),
        ({"model_file": "../../etc/model.onnx"}, "model_file must be a file name"),
        ({"classes": ["a", "a"]}, "distinct names"),
        ({"classes": "ab"}, "classes must be a list of strings"),
        ({"temperature": 0}, "temperature must be a positive number"),
        ({"temperature": "1.0"}, "temperature must be a number"),
        ({"thresholds": {"c": 0.5}}, r"name \['c'\], which are not among the classes"),
        ({"thresholds": {"a": 1.5}}, r"thresholds must be in \[0, 1\] or null"),
        ({"blocked_classes": ["z"]}, r"name \['z'\]"),
        ({"_target_": "os.system"}, r"unknown fields \['_target_'\]"),
        ({"preprocessing": {"input_size": [8, 8]}}, "preprocessing must be an object with exactly"),
        ({"outputs": ["embedding"]}, r"outputs must be \['logits'\]"),
        ({"familiarity": "../index"}, "familiarity must be a folder name beside the sidecar"),
    ],
)
def test_a_bad_sidecar_is_refused_with_the_field_named(tmp_path, change, message):
    path = tmp_path / "model.onnx.json"
    path.write_text(json.dumps({**_valid(), **change}))
    with pytest.raises(SidecarError, match=message):
        read_sidecar(path)


def test_a_valid_sidecar_reads_back_and_non_json_numbers_are_refused(tmp_path):
    path = tmp_path / "model.onnx.json"
    path.write_text(json.dumps(_valid()))
    assert read_sidecar(path).preprocessing.input_size == (8, 8)
    path.write_text(json.dumps(_valid()).replace('"temperature": 1.0', '"temperature": NaN'))
    with pytest.raises(SidecarError, match="NaN is not a valid JSON number"):
        read_sidecar(path)
