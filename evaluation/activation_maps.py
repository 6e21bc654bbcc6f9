"""Where the model looks: Grad-CAM maps (Selvaraju et al., ICCV 2017) and overlays for galleries.

A map shows which parts of the image raised the score of one class, at the resolution of the
backbone's last stage. It is how one sees that a model looks at the background, a watermark or
the runway instead of the aircraft.

The maps come from Captum's ``LayerGradCam``: it is maintained by the PyTorch project, ships as
a wheel whose dependencies this project already has, and takes the target layer as a module,
which is what timm's ``feature_info`` leads to. The layer is the backbone's last feature stage
(``model.feature_info[-1]``), so every timm CNN works without naming layers by hand.

Cost: one forward and one backward pass over the given images, so this takes a small batch
(``max_images``) and never a whole split; a caller picks the images (the hardest errors, a few
correct ones per class).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

MAX_IMAGES = 64  # per call: one backward pass holds every activation of the batch in memory


def find_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of the last feature stage a timm model lists in ``feature_info``.

    Raises:
        ValueError: if the model has no ``feature_info`` (not a timm model) or names no module.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(
            f"{type(model).__name__} has no timm feature_info to find its last stage from: "
            "pass the target layer's name as `layer=`"
        )
    name = info[-1]["module"] if isinstance(info, list | tuple) else info.module_name()[-1]
    return name, model.get_submodule(name)


def layer_for_input(model: nn.Module, input_size: tuple[int, int], min_side: int = 7) -> str:
    """The deepest feature stage in timm's ``feature_info`` whose map keeps ``min_side`` cells across the
    input's shorter side (the first stage if none does).

    Grad-CAM's map has the resolution of its layer: a 224 px input gives the usual 7 x 7 at
    the last stage (stride 32), but a 64 px input only 2 x 2, which shows nothing. A
    shallower stage keeps the map readable on small inputs, at the cost of features that
    are less specific to the class.

    Raises:
        ValueError: the model has no ``feature_info``.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm feature_info to pick a stage from: pass `layer=`")
    stages = list(info) if isinstance(info, list | tuple) else info.get_dicts()
    short = min(input_size)
    fitting = [stage for stage in stages if short / stage["reduction"] >= min_side]
    return (fitting[-1] if fitting else stages[0])["module"]


def _feature_channels(model: nn.Module, name: str) -> int | None:
    """The channels timm's ``feature_info`` gives for module ``name`` (``None`` when it does not list it)."""
    info = getattr(model, "feature_info", None)
    entries = info if isinstance(info, list | tuple) else getattr(info, "info", None) or []
    return next((e.get("num_chs") for e in entries if e.get("module") == name), None)


def class_activation_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor | list[int] | None = None,
    *,
    layer: str | None = None,
    max_images: int = MAX_IMAGES,
) -> np.ndarray:
    """Grad-CAM maps of ``classes`` for a small batch, upsampled to the input size, each scaled to [0, 1].

    Args:
        model: a classifier returning logits (a timm model, or anything with ``feature_info``
            when ``layer`` is ``None``). Its train/eval mode is restored afterwards.
        inputs: ``N x 3 x H x W``, normalised as the model expects.
        classes: one class id per image (the true or the predicted class); the predicted class
            when ``None``.
        layer: the target module's name (``model.get_submodule``); the last ``feature_info``
            stage when ``None``.
        max_images: the most images accepted in one call.

    Returns:
        ``N x H x W`` float32 maps in [0, 1] (all zeros where nothing raised the score).

    Raises:
        ValueError: a batch larger than ``max_images``, or a layer whose output is not an
            ``N x C x h x w`` feature map (vision transformers' tokens, channels-last stages).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if inputs.ndim != 4:
        raise ValueError(f"class_activation_maps takes an N x 3 x H x W batch, got shape {tuple(inputs.shape)}")
    if len(inputs) > max_images:
        raise ValueError(
            f"class_activation_maps got {len(inputs)} images, more than max_images={max_images}: "
            "pick the images to explain (the maps cost a backward pass each batch)"
        )
    if layer:
        try:
            name, module = layer, model.get_submodule(layer)
        except AttributeError:
            stages = [e.get("module") for e in getattr(model, "feature_info", None) or [] if isinstance(e, dict)]
            raise ValueError(
                f"the backbone has no module {layer!r}" + (f"; its stages are {stages}" if stages else "")
            ) from None
    else:
        name, module = find_target_layer(model)
    shapes = []
    hook = module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            inputs = inputs.detach().clone().requires_grad_(True)
            if classes is None:
                with torch.no_grad():
                    classes = model(inputs).argmax(dim=1)
            target = torch.as_tensor(classes, dtype=torch.long, device=inputs.device)
            attributions = LayerGradCam(model, module).attribute(inputs, target=target, relu_attributions=True)
    finally:
        hook.remove()
        model.train(was_training)
    # A stage timm lists has a known channel count: a channels-last stage (Swin, Hiera) outputs
    # N x h x w x C, which is 4-D too, and must not be read as N x C x h x w.
    channels = _feature_channels(model, name)
    out_shape = shapes[-1] if shapes else ()
    if len(out_shape) != 4 or (channels is not None and out_shape[1] != channels):
        raise ValueError(
            f"layer {name!r} outputs shape {out_shape}, not an N x C x h x w feature map: Grad-CAM here "
            "supports convolutional backbones; pass `layer=` naming a convolutional stage"
        )
    maps = LayerAttribution.interpolate(attributions.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].float().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, np.clip(maps, 0, None) / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """``image`` (``H x W x 3`` uint8) with ``cam`` (any size, values in [0, 1]) as a colour heatmap on top.

    Red is where the class score rose most; the image shows through (``alpha`` = heatmap weight).
    """
    height, width = image.shape[:2]
    if cam.shape != (height, width):
        cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    heat = colormaps[colormap](np.clip(cam, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def side_by_side(image: np.ndarray, cam: np.ndarray, *, min_side: int = 160, alpha: float = 0.45) -> np.ndarray:
    """The original and its overlay next to each other, for a gallery tile; small images are enlarged
    (hard pixel edges) to at least ``min_side`` pixels so the map stays readable."""
    height, width = image.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(height, width)))))
    if factor > 1:
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    blended = overlay(image, cam, alpha=alpha)
    gap = np.full((image.shape[0], max(4, image.shape[1] // 32), 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, blended], axis=1)
