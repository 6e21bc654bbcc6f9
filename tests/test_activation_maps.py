"""Grad-CAM maps from the last feature stage of any timm CNN, and readable overlays."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from evaluation.activation_maps import (
    class_activation_maps,
    find_target_layer,
    layer_for_input,
    overlay,
    side_by_side,
)


class BrightnessScorer(nn.Module):
    """Class 0's score is the mean brightness, class 1's its negative: Grad-CAM of class 0 must
    light up the bright patch, and class 1 has nothing that raised its score."""

    feature_info = [{"module": "features", "num_chs": 1, "reduction": 1}]  # noqa: RUF012  (timm's layout)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, kernel_size=1, bias=False), nn.ReLU())
        nn.init.constant_(self.features[0].weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.features(x).mean(dim=(1, 2, 3))
        return torch.stack([score, -score], dim=1)


def test_map_lights_up_what_raised_the_class_score():
    image = torch.zeros(2, 3, 32, 32)
    image[:, :, 20:30, 4:14] = 1.0  # a bright patch, bottom left
    model = BrightnessScorer().train()
    maps = class_activation_maps(model, image, [0, 1])
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    inside = maps[0, 21:29, 5:13]
    assert inside.min() > 0.9 and maps[0].max() == pytest.approx(1.0)
    outside = maps[0].copy()
    outside[18:32, 2:16] = 0
    assert outside.max() < 0.05
    assert not maps[1].any()  # nothing raised class 1's score
    assert model.training  # the caller's mode is restored
    default = class_activation_maps(model, image)  # the predicted class (0 here)
    np.testing.assert_allclose(default, maps[[0, 0]], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "layer"), [("test_convnext", "stages.3"), ("test_efficientnet", "blocks.4"), ("resnet10t", "layer4")]
)
def test_any_timm_cnn_works_through_its_feature_info(name, layer):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3)
    assert find_target_layer(model)[0] == layer
    inputs = torch.randn(3, 3, 64, 48)
    maps = class_activation_maps(model, inputs, [0, 1, 2])
    assert maps.shape == (3, 64, 48)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() == pytest.approx(1.0) or not m.any() for m in maps)
    assert inputs.grad is None  # the caller's tensor is left alone


def test_cost_is_bounded_and_unsupported_layers_fail_clearly():
    model = timm.create_model("test_convnext", pretrained=False, num_classes=3)
    with pytest.raises(ValueError, match="max_images=2"):
        class_activation_maps(model, torch.randn(3, 3, 32, 32), max_images=2)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    with pytest.raises(ValueError, match="not an N x C x h x w feature map"):
        class_activation_maps(vit, torch.randn(1, 3, 160, 160))
    with pytest.raises(ValueError, match="feature_info"):
        find_target_layer(nn.Linear(2, 2))


def test_overlay_sits_beside_the_original_and_reddens_where_the_map_is_high():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, size=(24, 32, 3)).astype(np.uint8)
    cam = np.zeros((12, 16), dtype=np.float32)
    cam[:6, :8] = 1.0  # top-left quarter, at half resolution
    blended = overlay(image, cam)
    assert blended.shape == image.shape and blended.dtype == np.uint8

    def red_minus_blue(pixels: np.ndarray) -> float:
        return float(pixels[..., 0].astype(float).mean() - pixels[..., 2].astype(float).mean())

    # jet runs from dark blue (0) to dark red (1): high map values pull towards red, low ones towards blue.
    assert red_minus_blue(blended[:10, :14]) > red_minus_blue(image[:10, :14]) + 40
    assert red_minus_blue(blended[14:, 18:]) < red_minus_blue(image[14:, 18:]) - 40
    tile = side_by_side(image, cam, min_side=96)
    factor = 4  # 24 px short side -> at least 96 px
    assert tile.shape[0] == 24 * factor and tile.shape[1] > 2 * 32 * factor
    np.testing.assert_array_equal(tile[::factor, : 32 * factor : factor], image)  # the original, enlarged


def test_channels_last_stages_and_misspelt_layers_are_refused_not_misread():
    # Swin's stages output N x h x w x C: 4-D, but not a map Grad-CAM can read as N x C x h x w.
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=2).eval()
    with pytest.raises(ValueError, match="not an N x C x h x w"):
        class_activation_maps(swin, torch.randn(1, 3, 224, 224), [0], layer=layer_for_input(swin, (224, 224)))
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    with pytest.raises(ValueError, match=r"no module 'stage\.2'; its stages are \[.*'layer2'"):
        class_activation_maps(resnet, torch.randn(1, 3, 64, 64), [0], layer="stage.2")
