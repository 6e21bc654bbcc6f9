"""Hydra launchers through submitit: a SLURM job asks for what Lightning's DDP needs; local sweeps
(grid and Optuna) run each job in its own process and fill every run's hparams tab."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import ROOT, run_cli, tiny_overrides, write_digits


@pytest.fixture(scope="module")
def few_digits(tmp_path_factory) -> Path:
    """40 images (4 classes x 10): a sweep job is mostly process start-up."""
    return write_digits(tmp_path_factory.mktemp("few_digits"), per_class=10, classes=4)


def _sweep_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    keep = [o for o in tiny_overrides(data_root, tmp_path) if not o.startswith(("paths.output_dir", "trainer.max"))]
    return [
        *keep,
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        "callbacks=minimal",
        "hydra/launcher=local",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]


def _hparams_tab(run_dir: Path) -> tuple[dict, dict[str, float]]:
    """What TensorBoard's hparams tab shows for a run: its hyper-parameters and its ``hparams/...`` metrics."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    params, metrics = {}, {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        hparams = data.session_start_info.hparams
                        params = {k: getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}
                elif value.tag.startswith("hparams/"):
                    kind = value.WhichOneof("value")
                    number = value.simple_value if kind == "simple_value" else tensor_util.make_ndarray(value.tensor)
                    metrics[value.tag] = float(number)
    return params, metrics


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _job_id(run_dir: Path) -> str:
    return str(yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])


def test_slurm_job_asks_for_one_task_per_gpu(tmp_path, monkeypatch):
    """The sbatch script the launcher writes for trainer=ddp on 2 nodes x 4 GPUs (no cluster needed)."""
    import submitit

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")  # submitit's SLURM executor only checks that srun exists
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    scripts = []
    monkeypatch.setattr(
        submitit.AutoExecutor,
        "map_array",
        lambda self, fn, *args: scripts.append(self._executor._make_submission_file_text("python -m x", "0")) or [],
    )
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4"]
    overrides += ["hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Hydra's deprecated schema matching of a same-named config
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    assert launcher.launch([["model.lr=0.001"]], initial_job_idx=0) == []
    sbatch = {line for line in scripts[0].splitlines() if line.startswith("#SBATCH")}
    expected = {"--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--time=240"}
    expected |= {"--mem=64GB", "--cpus-per-task=6"}
    assert {f"#SBATCH {option}" for option in expected} <= sbatch


@pytest.mark.slow
def test_local_sweep_runs_each_job_in_its_own_process_and_fills_the_hparams_tab(few_digits, tmp_path):
    run_cli(["train.py", "-m", *_sweep_overrides(few_digits, tmp_path), "model.lr=1e-3,3e-3"])
    sweep = tmp_path / "sweep"
    jobs = _jobs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    ids = [_job_id(job) for job in jobs]
    assert len(set(ids)) == 2 and all(i.isdigit() for i in ids)  # submitit's local job id: the job's process id
    for job, job_id, lr in zip(jobs, ids, (1e-3, 3e-3), strict=True):
        assert (sweep / ".submitit" / job_id / f"{job_id}_0_result.pkl").is_file()
        metrics = json.loads((job / "reports" / "metrics.json").read_text())
        params, logged = _hparams_tab(job)
        assert params["model.lr"] == pytest.approx(lr)
        assert params["choice/callbacks"] == "minimal"  # the job saw its Hydra config (run inside submitit)
        assert logged["hparams/val_acc_best"] == pytest.approx(metrics["val/acc_best"])
        assert logged["hparams/val_loss"] == pytest.approx(metrics["val/loss"])
    assert not (tmp_path / "logs").exists()  # nothing outside the sweep folder


@pytest.mark.slow
def test_optuna_sweep_through_the_local_launcher(few_digits, tmp_path):
    run_cli(
        [
            "train.py",
            "hparams_search=optuna",
            *_sweep_overrides(few_digits, tmp_path),
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",  # both trials in one batch: two processes at once
            # The validation loss tells two one-epoch trials apart (their accuracy often ties).
            "optimized_metric=val/loss",
            "hydra.sweeper.direction=minimize",
        ]
    )
    sweep = tmp_path / "sweep"
    jobs = _jobs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    assert len(set(map(_job_id, jobs))) == 2
    losses, params = [], []
    for job in jobs:
        losses.append(json.loads((job / "reports" / "metrics.json").read_text())["val/loss"])
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        params.append({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides) if k in SEARCHED})
        assert _hparams_tab(job)[1]["hparams/val_loss"] == pytest.approx(losses[-1])
    assert losses[0] != losses[1]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(range(2), key=losses.__getitem__)
    assert results["best_value"] == pytest.approx(losses[best])
    assert results["best_params"] == pytest.approx(params[best])
    assert set(params[best]) == set(SEARCHED)


# The parameters conf/hparams_search/optuna.yaml searches.
SEARCHED = ("model.lr", "model.backbone_lr_scale", "model.label_smoothing")


def test_ddp_inside_a_local_job_stops_with_the_fix(monkeypatch):
    """Lightning would start DDP ranks by re-running submitit's job runner; the run says so instead."""
    from lightning.pytorch import Trainer

    from runs.ddp import check_process_launch
    from runs.errors import ConfigError

    def trainer(devices: int) -> Trainer:
        return Trainer(accelerator="cpu", devices=devices, strategy="ddp", logger=False, enable_progress_bar=False)

    check_process_launch(trainer(2))  # not inside a submitit job: Lightning starts the processes
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(ConfigError, match=r"trainer.devices=2 .*hydra/launcher=local.*trainer.devices=1"):
        check_process_launch(trainer(2))
    check_process_launch(trainer(1))
