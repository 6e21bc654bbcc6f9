"""The training harness end to end: fast_dev_run, the run folder, eval, resume, sweeps, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from eval import evaluate
from tests.conftest import compose_config, run_cli, tiny_overrides, write_digits
from train import train


def test_fast_dev_run(tiny_cfg):
    metrics = train(tiny_cfg("debug=fast", "data.test_fraction=0.1"))
    assert 0 <= metrics["val/acc"] <= 1 and "test/acc" in metrics


def test_run_folder_layout(trained):
    run_dir, metrics, _ = trained
    for path in [
        "config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "reports/classes.json",
        "reports/augment.yaml",
        "reports/unreadable.csv",
        "reports/data_summary.json",
        "reports/metrics.json",
        "reports/samples.csv",
        "reports/augmentation_preview.png",
        "reports/val/confusion_matrix.csv",
        "reports/val/hardest.csv",
        "reports/val/per_class_metrics.csv",
        "reports/val/embedding_points.csv",
        "reports/test/confusion_matrix.csv",
        "reports/label_suspects.csv",
        "reports/label_scores.csv",
    ]:
        assert (run_dir / path).is_file(), path
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((run_dir / "reports" / "metrics.json").read_text())
    assert saved["val/acc_best"] == pytest.approx(metrics["val/acc_best"])
    augment = yaml.safe_load((run_dir / "reports" / "augment.yaml").read_text())
    names = [t["__class_fullname__"] for t in augment["train"]["transform"]["transforms"]]
    assert names == ["RandomResizedCrop", "HorizontalFlip", "Normalize", "ToTensorV2"]
    assert augment["train"]["transform"]["transforms"][0]["scale"] == [0.5, 1.0]


def test_checkpoints_load_with_weights_only_and_carry_plain_metadata(trained):
    run_dir, _, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == [f"digit_{c}" for c in range(10)]
    assert checkpoint["hyper_parameters"]["preprocessing"]["input_size"] == [32, 32]
    assert set(checkpoint["val_metrics"]) >= {"val/acc", "val/f1_macro", "val/loss"}


def test_eval_reproduces_the_checkpoint_metrics(trained, tmp_path, digits_folder):
    run_dir, metrics, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    cfg = compose_config(
        [
            *tiny_overrides(digits_folder, tmp_path / "eval"),
            "data.test_fraction=0.1",
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
        ],
        config_name="eval",
    )
    results = evaluate(cfg)
    for key in ("val/acc", "val/f1_macro", "val/loss"):
        assert results["val"][key] == pytest.approx(checkpoint["val_metrics"][key], abs=1e-6), key
    for key in ("test/acc", "test/f1_macro"):
        assert results["test"][key] == pytest.approx(metrics[key], abs=1e-6), key
    assert (tmp_path / "eval" / "reports" / "test" / "confusion_matrix.csv").is_file()


def test_eval_needs_only_the_checkpoint(trained, tmp_path):
    run_dir, metrics, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    evaluated = tmp_path / "eval"
    result = run_cli(["eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={evaluated}"])
    saved = json.loads((evaluated / "reports" / "metrics.json").read_text())
    assert saved["val"]["val/acc"] == pytest.approx(checkpoint["val_metrics"]["val/acc"], abs=1e-6)
    assert saved["test"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    # The same samples as the training run, from its saved catalogue.
    assert (evaluated / "catalogue.json").read_text() == (run_dir / "catalogue.json").read_text()
    assert "saved with checkpoint" in result.stdout


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tiny_cfg, tmp_path):
    """Shuffling and augmentation come from (seed, epoch, index), dropout from the saved random state:
    epochs after a resume are the epochs an uninterrupted run trains, with DataLoader workers too."""
    common = ["trainer.max_epochs=3", "callbacks=minimal", "data.num_workers=2", "model.drop_rate=0.3"]
    straight, interrupted = tmp_path / "straight.jsonl", tmp_path / "interrupted.jsonl"

    def run(folder, log, *extra):
        overrides = [
            *common,
            f"paths.output_dir={tmp_path / folder}",
            "+callbacks.log._target_=tests.helpers.EpochMetrics",
        ]
        train(tiny_cfg(*overrides, f"+callbacks.log.path={log}", *extra))

    run("a", straight)
    run("b", interrupted, "+callbacks.stop._target_=tests.helpers.StopAfterEpoch", "+callbacks.stop.epoch=0")
    run("b", interrupted, f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}")
    a = [json.loads(line) for line in straight.read_text().splitlines()]
    b = [json.loads(line) for line in interrupted.read_text().splitlines()]
    assert [r["epoch"] for r in a] == [0, 1, 2] and [r["epoch"] for r in b] == [0, 1, 2]
    for x, y in zip(a, b, strict=True):
        for key in ("train/loss_epoch", "train/acc", "val/loss", "val/acc"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["epoch"], key)


def test_eval_rejects_data_with_other_classes(trained, tmp_path):
    run_dir, _, _ = trained
    other = write_digits(tmp_path / "other", per_class=10, classes=4)
    cfg = compose_config(
        [*tiny_overrides(other, tmp_path / "eval"), f"ckpt_path={run_dir}/checkpoints/best.ckpt"], config_name="eval"
    )
    with pytest.raises(ValueError, match="trained on 10 classes"):
        evaluate(cfg)


def test_resume_continues_the_epoch_count_and_the_best_so_far(tiny_cfg, tmp_path):
    first = train(tiny_cfg("trainer.max_epochs=2", "callbacks=minimal"))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1
    best_before = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=True)["val_metrics"]
    # Resume in the same run folder (what `hydra.run.dir=<run>` does on the command line).
    resumed = train(tiny_cfg("trainer.max_epochs=4", "callbacks=minimal", f"ckpt_path={checkpoints / 'last.ckpt'}"))
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 3
    steps_per_epoch = 15  # 240 training images / batch 16
    assert checkpoint["global_step"] == 4 * steps_per_epoch
    # The best so far survives the resume: val/acc_best and best.ckpt never go below the first part's.
    assert resumed["val/acc_best"] >= first["val/acc_best"]
    best_after = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=True)["val_metrics"]
    assert best_after["val/acc"] >= best_before["val/acc"]
    assert resumed["val/acc_best"] == pytest.approx(best_after["val/acc"])


@pytest.mark.slow
def test_multirun_writes_one_folder_per_job(digits_folder, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(digits_folder, tmp_path) if not o.startswith("paths.output_dir")]
    run_cli(
        [
            "train.py",
            "-m",
            "model.lr=1e-3,3e-3",
            *overrides,
            "trainer.max_epochs=1",
            "callbacks=minimal",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".hydra")
    assert jobs == ["0", "1"]
    lrs = []
    for job in jobs:
        assert json.loads((sweep / job / "reports" / "metrics.json").read_text())["val/acc"] >= 0
        assert list((sweep / job / "tensorboard").glob("events.out.tfevents.*"))
        lrs.append(yaml.safe_load((sweep / job / "config.yaml").read_text())["model"]["lr"])
    assert lrs == [1e-3, 3e-3]


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_on_the_returned_metric(digits_folder, tmp_path):
    sweep = tmp_path / "optuna"
    overrides = [o for o in tiny_overrides(digits_folder, tmp_path) if not o.startswith("paths.output_dir")]
    run_cli(
        [
            "train.py",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            *overrides,
            "trainer.max_epochs=1",
            "callbacks=minimal",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_job_metric = max(
        json.loads((sweep / job / "reports" / "metrics.json").read_text())["val/acc_best"] for job in ("0", "1")
    )
    assert results["best_value"] == pytest.approx(best_job_metric)
    assert set(results["best_params"]) == {"model.lr", "model.backbone_lr_scale", "model.label_smoothing"}


def _hparams_metrics(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hparams/")}


def test_hparams_tab_gets_real_final_metrics(trained):
    run_dir, metrics, _ = trained
    logged = _hparams_metrics(run_dir)
    assert logged["hparams/val_acc_best"] == pytest.approx(metrics["val/acc_best"])
    assert logged["hparams/test_acc"] == pytest.approx(metrics["test/acc"])
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    session, experiment, tags = None, None, set()
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        session = data.session_start_info
                    if data.HasField("experiment"):
                        experiment = data.experiment
    assert "hp_metric" not in tags
    assert session.hparams["model.lr"].number_value == pytest.approx(3e-3)
    assert session.hparams["model.name"].string_value == "test_convnext"
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparams/val_acc_best", "hparams/test_acc"}


def test_csv_and_tensorboard_loggers_together(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("logger=many", "trainer.max_epochs=1", "callbacks=minimal", "data.test_fraction=0.1"))
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "val/acc" in header and "hparams/test_acc" in header
    final = dict(zip(header, rows[-1].split(","), strict=True))
    assert float(final["hparams/test_acc"]) == pytest.approx(metrics["test/acc"])
    assert "model.lr" in (tmp_path / "run" / "csv" / "hparams.yaml").read_text()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
