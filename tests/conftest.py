"""Shared fixtures: offline environment, small generated image folders, composed configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from runs import environment

environment.setup()

ROOT = Path(__file__).resolve().parents[1]


def write_digits(root: Path, per_class: int = 30, classes: int = 10, size: int = 24, seed: int = 0) -> Path:
    """Real 8x8 digits from scikit-learn, enlarged to ``size`` px, as ``root/<digit>/*.png``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(classes):
        members = np.flatnonzero(digits.target == c)
        folder = root / f"digit_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for _k, i in enumerate(rng.choice(members, size=per_class, replace=False)):
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).convert("RGB").save(
                folder / f"d{i:04d}.png"
            )
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """300 real digit images (10 classes x 30) in class folders."""
    return write_digits(tmp_path_factory.mktemp("digits"))


def tiny_overrides(data_root: Path, run_dir: Path) -> list[str]:
    """A run that takes seconds on a CPU: tiny timm model, 32 px, no workers, no pretrained weights."""
    return [
        "data=folder",
        f"data.root={data_root}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=16",
        "model=scratch",
        "model.name=test_convnext",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        f"paths.output_dir={run_dir}",
    ]


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture
def tiny_cfg(digits_folder, tmp_path):
    """Composes the training config for a tiny run in ``tmp_path/run``; extra overrides as arguments."""

    def make(*extra: str, config_name: str = "train") -> DictConfig:
        return compose_config(tiny_overrides(digits_folder, tmp_path / "run") + list(extra), config_name)

    return make


def run_cli(args: list[str], timeout: int = 600, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``python <args>`` as a user would, in a fresh process (scripts named relative to the repo)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    args = [str(ROOT / a) if a.endswith(".py") and (ROOT / a).is_file() else a for a in args]
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"python {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="session")
def trained(tmp_path_factory, digits_folder):
    """One tiny real run (3 epochs, a test split) with every default callback, shared by many checks.

    Returns (run folder, final metrics, config).
    """
    from train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config([*tiny_overrides(digits_folder, run_dir), "data.test_fraction=0.1", "trainer.max_epochs=3"])
    metrics = train(cfg)
    return run_dir, metrics, cfg
