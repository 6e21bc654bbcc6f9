"""Synchronised BatchNorm keeps timm's fused norm + activation layers: the same function, every activation."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from timm.layers import BatchNormAct2d
from timm.layers.split_batchnorm import SplitBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.sync_batchnorm import TimmSyncBatchNorm
from tests.conftest import compose_config, run_cli, tiny_overrides
from tests.layer_probe import norm_layers


def _model(name: str) -> nn.Module:
    """A timm model whose norm layers are not the identity: random running statistics and affine terms."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.5)
    return model.eval()


def _input(size: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_torch_conversion_drops_timm_activations():
    """What Lightning's ``sync_batchnorm=True`` does to EfficientNet-Lite0: the stem's ReLU6 is gone."""
    model = _model("tf_efficientnet_lite0")
    x = _input()
    with torch.no_grad():
        stem = model.bn1(model.conv_stem(x))
        expected = model(x)
        broken = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
        assert type(broken.bn1) is nn.SyncBatchNorm and isinstance(broken.bn1.act, nn.ReLU6)  # kept, never called
        broken_stem = broken.bn1(broken.conv_stem(x))
        assert stem.min() >= 0.0
        assert broken_stem.min() < -0.5  # the ReLU6 would have made it >= 0
        assert not torch.allclose(broken(x), expected, atol=1e-3)


@pytest.mark.parametrize(("name", "fused", "relu6"), [("tf_efficientnet_lite0", 49, 33), ("resnet10t", 0, 0)])
def test_plugin_keeps_every_activation_and_the_function(name, fused, relu6):
    model = _model(name)
    x = _input()
    before = norm_layers(model)
    plain = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    with torch.no_grad():
        expected = model(x)
        synced = TimmSyncBatchNorm().apply(model).eval()
        got = synced(x)
    after = norm_layers(synced)

    assert before["classes"].get("BatchNormAct2d", 0) == fused
    assert after["classes"].get("SyncBatchNormAct", 0) == fused
    assert after["classes"].get("SyncBatchNorm", 0) == plain  # torch's own BatchNorm2d, activation outside
    assert not any(isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert after["acts"] == before["acts"]  # same layers, same activations
    assert sum(act == "ReLU6" for act in after["acts"].values()) == relu6
    assert torch.equal(got, expected)


def test_revert_gives_back_the_original_layers_with_what_training_changed():
    model = _model("tf_efficientnet_lite0")
    originals = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    keys = list(model.state_dict())
    plugin = TimmSyncBatchNorm()
    synced = plugin.apply(model)
    # A training-mode step outside a process group normalises locally and updates the statistics.
    synced.train()(_input())
    trained = {k: v.clone() for k, v in synced.state_dict().items()}
    synced.eval()
    with torch.no_grad():
        expected = synced(_input())

    reverted = plugin.revert(synced)
    layers = {n: m for n, m in reverted.named_modules() if isinstance(m, _BatchNorm)}
    assert layers.keys() == originals.keys()
    assert all(layers[n] is originals[n] for n in layers)  # the same objects, so the same classes
    assert {type(m) for m in layers.values()} == {BatchNormAct2d}
    assert list(reverted.state_dict()) == keys  # checkpoints load either way
    for key, value in reverted.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert not torch.equal(trained["bn1.running_mean"], _model("tf_efficientnet_lite0").bn1.running_mean)
    with torch.no_grad():
        assert torch.equal(reverted(_input()), expected)


def test_already_synchronised_layers_stay_whole():
    """Applying twice (timm's converter alone would turn SyncBatchNormAct into a plain SyncBatchNorm)."""
    once = TimmSyncBatchNorm().apply(_model("tf_efficientnet_lite0"))
    twice = TimmSyncBatchNorm().apply(once)
    assert norm_layers(twice)["classes"] == {"SyncBatchNormAct": 49}


def test_a_batchnorm_with_its_own_forward_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SplitBatchNorm2d(4, num_splits=2))
    with pytest.raises(ValueError, match=r"layer 1 \(SplitBatchNorm2d\).*trainer.plugins=\[\]"):
        TimmSyncBatchNorm().apply(model)


def test_cpu_process_group_cannot_train_sync_batchnorm(tmp_path):
    """Why ``trainer=ddp_sim`` (gloo, CPU) does not synchronise: torch's SyncBatchNorm trains on GPUs only."""
    layer = TimmSyncBatchNorm().apply(nn.Sequential(BatchNormAct2d(4, act_layer=nn.ReLU6)))
    x = torch.randn(4, 4, 3, 3)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            layer.train()(x)
        assert layer.eval()(x).min() >= 0  # evaluation normalises locally, activation included
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_config_uses_the_plugin_instead_of_lightnings_conversion(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config([*tiny_overrides(tmp_path, tmp_path / "run"), "trainer=ddp"])
    assert not cfg.trainer.get("sync_batchnorm", False)
    plugins = instantiate(cfg.trainer.plugins)
    assert [type(p) for p in plugins] == [TimmSyncBatchNorm]
    # Lightning takes the plugin as its layer sync, and refuses it next to its own conversion.
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=plugins, logger=False)
    assert trainer.strategy._layer_sync is plugins[0]
    with pytest.raises(MisconfigurationException, match="sync_batchnorm=True"):
        Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=plugins, sync_batchnorm=True, logger=False)
    assert "plugins" not in compose_config([*tiny_overrides(tmp_path, tmp_path / "run"), "trainer=ddp_sim"]).trainer


@pytest.mark.slow
def test_two_process_run_keeps_every_activation(digits_folder, tmp_path):
    """2 gloo processes fit with the plugin from the config; every rank trains and tests through the timm activations.

    As close as a CPU gets: torch's DDP wrapper refuses SyncBatchNorm layers on CPU (the test
    strategy leaves the model unwrapped), and SyncBatchNorm's training forward raises on CPU, so
    the backbone is frozen for the one epoch (its norm layers then normalise with their running
    statistics) while the head trains. Synchronised statistics themselves need GPUs.
    """
    probe = tmp_path / "probe"
    keep = [o for o in tiny_overrides(digits_folder, tmp_path / "run") if not o.startswith("trainer=")]
    run_cli(
        [
            "train.py",
            *keep,
            "trainer=ddp_sim",
            "trainer.strategy={_target_:tests.layer_probe.UnwrappedDDPStrategy}",
            "trainer.max_epochs=1",
            "+trainer.plugins=[{_target_:models.sync_batchnorm.TimmSyncBatchNorm}]",
            "model.name=test_efficientnet",
            "model.freeze_backbone_epochs=1",
            "data.test_fraction=0.1",
            "callbacks=minimal",
            f"+callbacks.probe={{_target_:tests.layer_probe.NormLayerProbe,out_dir:{probe}}}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    reference = norm_layers(timm.create_model("test_efficientnet", pretrained=False))
    assert reference["classes"] == {"BatchNormAct2d": 13}
    for rank in (0, 1):
        fit = json.loads((probe / f"fit_rank{rank}.json").read_text())
        assert fit["world_size"] == 2
        assert fit["classes"] == {"SyncBatchNormAct": 13}
        assert {k.removeprefix("backbone."): v for k, v in fit["acts"].items()} == reference["acts"]
        test = json.loads((probe / f"test_rank{rank}.json").read_text())  # reverted after fitting
        assert test["classes"] == {"BatchNormAct2d": 13}
        assert test["acts"] == fit["acts"]
    metrics = json.loads((tmp_path / "run" / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
