"""Untrusted data never becomes code: labels, folder names and checkpoint values stay plain text.

The attacks: a class folder or manifest label such as ``${oc.create:{_target_:shutil.copyfile,...}}``
(resolved and instantiated if it ever reached an OmegaConf config), folder names with ``${...}``
and ``${oc.env:...}``, and checkpoints whose hyper-parameters hold a ``_target_`` node. Each test
shows that nothing is built and nothing is written, and that such labels train and evaluate as
literal class names.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from runs.errors import CheckpointError
from tests.conftest import compose_config, run_cli, tiny_overrides
from train import train


def _copy_attack(dst: str) -> str:
    return "${oc.create:{_target_:shutil.copyfile,src:bait.txt,dst:" + dst + "}}"


@pytest.fixture(scope="module")
def crafted_folder(tmp_path_factory, digits_folder):
    """Digit images under class folders named like interpolations."""
    root = tmp_path_factory.mktemp("crafted") / "data"
    names = ["price_${x}", "cat${oc.env:HOME}", _copy_attack("pwned_by_folder.txt")]
    for name, digit in zip(names, (0, 1, 2), strict=True):
        shutil.copytree(digits_folder / f"digit_{digit}", root / name)
    return root, names


@pytest.mark.slow
def test_crafted_folder_names_train_and_evaluate_as_literal_class_names(crafted_folder, tmp_path):
    root, names = crafted_folder
    (tmp_path / "bait.txt").write_text("secret")  # what the attack would copy, relative to the working directory
    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(root, run) if not o.startswith("paths.output_dir")]
    result = run_cli(["train.py", *overrides, "trainer.max_epochs=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0
    assert not (tmp_path / "pwned_by_folder.txt").exists()
    assert json.loads((run / "reports" / "classes.json").read_text()) == sorted(names)
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == sorted(names)

    evaluated = tmp_path / "eval"
    run_cli(["eval.py", f"ckpt_path={run}/checkpoints/best.ckpt", f"hydra.run.dir={evaluated}"], cwd=tmp_path)
    assert not (tmp_path / "pwned_by_folder.txt").exists()
    with open(evaluated / "reports" / "val" / "per_class_metrics.csv") as f:
        assert sorted(r["class"] for r in csv.DictReader(f)) == sorted(names)


def test_crafted_manifest_label_is_kept_literally_and_runs_nothing(digits_folder, tmp_path):
    (tmp_path / "bait.txt").write_text("secret")
    target = tmp_path / "pwned_by_label.txt"
    label = "${oc.create:{_target_:shutil.copyfile,src:" + str(tmp_path / "bait.txt") + ",dst:" + str(target) + "}}"
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for p in sorted(digits_folder.glob("digit_[01]/*.png")):
            writer.writerow([p, label if p.parent.name == "digit_0" else "${oc.env:HOME}"])
    overrides = [o for o in tiny_overrides(digits_folder, tmp_path / "run") if not o.startswith("data=")]
    cfg = compose_config(
        ["data=csv", f"data.manifest={manifest}", *overrides, "trainer.max_epochs=1", "callbacks=minimal"]
    )
    train(cfg)
    assert not target.exists()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == sorted([label, "${oc.env:HOME}"])


def _crafted_checkpoint(source, path, edit) -> str:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


def test_crafted_checkpoints_are_refused_before_anything_is_built(trained, tmp_path, digits_folder):
    from eval import evaluate

    run_dir = trained[0]
    best = run_dir / "checkpoints" / "best.ckpt"
    target = tmp_path / "pwned_by_checkpoint.txt"
    node = {"_target_": "shutil.copyfile", "src": str(best), "dst": str(target)}

    def target_in_class_names(c):
        c["hyper_parameters"]["class_names"][0] = node

    def target_in_preprocessing(c):
        c["hyper_parameters"]["preprocessing"]["interpolation"] = node

    def target_in_name(c):
        c["hyper_parameters"]["name"] = node

    cases = [
        (target_in_class_names, "class_names must be a list of at least two strings"),
        (target_in_preprocessing, "preprocessing is not valid"),
        (target_in_name, "name must be a timm model name"),
    ]
    for i, (edit, message) in enumerate(cases):
        crafted = _crafted_checkpoint(best, tmp_path / f"crafted{i}.ckpt", edit)
        for use in ("eval", "resume"):
            if use == "eval":
                cfg = compose_config(
                    [f"paths.output_dir={tmp_path / f'eval{i}'}", f"ckpt_path={crafted}"], config_name="eval"
                )
                run = evaluate
            else:
                overrides = tiny_overrides(digits_folder, tmp_path / f"resume{i}")
                cfg = compose_config([*overrides, f"ckpt_path={crafted}"])
                run = train
            with pytest.raises(CheckpointError, match=message):
                run(cfg)
            assert not target.exists()


def test_a_string_checkpoint_value_stays_text(trained, tmp_path, digits_folder):
    """A ${...} string where the architecture name belongs is not resolved: it is an unknown model name."""
    from eval import evaluate
    from models import WeightsError

    target = tmp_path / "pwned.txt"
    best = trained[0] / "checkpoints" / "best.ckpt"
    attack = "${oc.create:{_target_:shutil.copyfile,src:" + str(best) + ",dst:" + str(target) + "}}"

    def edit(c):
        c["hyper_parameters"]["name"] = attack

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(trained[0] / "catalogue.json", tmp_path / "run")  # the samples of the run it claims to be from
    crafted = _crafted_checkpoint(best, tmp_path / "run" / "checkpoints" / "crafted.ckpt", edit)
    cfg = compose_config([f"paths.output_dir={tmp_path / 'eval'}", f"ckpt_path={crafted}"], config_name="eval")
    with pytest.raises(WeightsError, match="is not a timm model"):
        evaluate(cfg)
    assert not target.exists()


def test_weights_from_a_crafted_checkpoint_load_only_tensors(trained, tmp_path, digits_folder):
    best = trained[0] / "checkpoints" / "best.ckpt"
    target = tmp_path / "pwned.txt"

    def edit(c):
        c["hyper_parameters"]["class_names"] = [{"_target_": "shutil.copyfile", "src": str(best), "dst": str(target)}]

    crafted = _crafted_checkpoint(best, tmp_path / "crafted.ckpt", edit)
    cfg = compose_config(
        [
            *tiny_overrides(digits_folder, tmp_path / "run"),
            f"model.weights={crafted}",
            "trainer.max_epochs=1",
            "callbacks=minimal",
            f"model.cache_dir={tmp_path / 'cache'}",
        ]
    )
    metrics = train(cfg)
    assert not target.exists() and metrics["val/acc"] > 0.2  # the backbone's tensors were used, nothing else


def test_pickled_objects_and_truncated_files_are_clear_errors(trained, tmp_path):
    from runs.checkpoints import read_checkpoint

    best = trained[0] / "checkpoints" / "best.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(truncated)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"hyper_parameters": {"class_names": ["a", "b"], "name": "x"}, "extra": CheckpointError("x")}, pickled)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain values"):
        read_checkpoint(pickled)
    (tmp_path / "plain.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(tmp_path / "plain.ckpt")
