"""Fine-tune an image classifier: compose the config -> build -> fit -> test -> summary.

python train.py                                     # built-in digits, offline
python train.py data=folder data.root=~/shots augment=drone model.name=convnext_tiny
python train.py -m model.lr=1e-3,3e-4               # a sweep, one run folder per job
python train.py hparams_search=optuna               # an Optuna search on `optimized_metric`
python train.py ckpt_path=<run>/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

import harness  # first: sets up the environment and the config resolvers
from datamodules import HELDOUT


def train(cfg: DictConfig) -> dict[str, float]:
    """Runs one training job; returns its final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    harness.share_config_with_ddp_children(cfg, run_dir)
    datamodule, model, trainer = harness.build(cfg)

    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = harness.scalar_metrics(trainer.callback_metrics)

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and cfg.train else ""
    # The best checkpoint of this fit; without training, the given checkpoint; else the weights in memory.
    evaluated = best or (None if cfg.train else cfg.ckpt_path)
    if cfg.test and "test" in datamodule.samples:
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=evaluated, weights_only=True)
        metrics.update(harness.scalar_metrics(tested[0]) if tested else {})
    if HELDOUT in datamodule.samples:
        # K-fold job: predict the held-out fold with the same weights; the heldout-prediction
        # callback writes the probabilities for cross-validated label checks.
        trainer.predict(model, datamodule=datamodule, ckpt_path=evaluated, weights_only=True, return_predictions=False)
    unreadable_late = datamodule.report_load_failures()

    harness.log_hparams_with_metrics(trainer, cfg, metrics)
    harness.write_json(run_dir / "reports" / "metrics.json", metrics)
    summary = datamodule.summary
    lines = [
        f"run folder   {run_dir}",
        f"data         {' / '.join(f'{k} {v}' for k, v in summary['used'].items())} of {summary['found']} found; "
        f"{summary['unreadable'] + len(unreadable_late)} unreadable, {summary['excluded_by_user']} excluded "
        f"(see reports/unreadable.csv, reports/data_summary.json)",
    ]
    if cfg.optimized_metric in metrics:
        lines.append(f"best         {cfg.optimized_metric} = {metrics[cfg.optimized_metric]:.4f}")
    if "test/acc" in metrics:
        lines.append(
            f"test         test/acc = {metrics['test/acc']:.4f}, test/f1_macro = {metrics['test/f1_macro']:.4f}"
        )
    if best:
        lines.append(f"checkpoint   {best}")
    lines.append(f"review       tensorboard --logdir {run_dir} --samples_per_plugin images=1000")
    harness.print_summary(lines)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with harness.job_scope():
        metrics = train(cfg)
    # Sweepers (Optuna) maximise what this returns.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    harness.main(train, main)
