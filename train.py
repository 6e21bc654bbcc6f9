"""Fine-tune an image classifier: compose the config -> build -> fit -> test -> summary.

python train.py                                     # built-in digits, offline
python train.py data=folder data.root=~/shots augment=drone model.name=convnext_tiny
python train.py -m model.lr=1e-3,3e-4               # a sweep, one run folder per job
python train.py hparams_search=optuna               # an Optuna search on `optimized_metric`
python train.py ckpt_path=<run>/checkpoints/last.ckpt hydra.run.dir=<run>   # resume
"""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from callbacks.class_thresholds import thresholds_summary
from datamodules import HELDOUT
from runs import audit_loops, audit_step, build, ddp, environment, hparams
from runs.checkpoints import read_checkpoint
from runs.errors import reported
from runs.folder import RunFolder


def train(cfg: DictConfig) -> dict[str, float]:
    """Runs one training job; returns its final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    folder = RunFolder(cfg.paths.output_dir)
    child = build.is_child()
    options = build.data_options(cfg)
    build.loader_options(options)  # bad batch sizes stop the run before any file is read
    build.check_trainer_options(cfg)
    audit = audit_step.AuditSettings.from_config(cfg.get("audit"))
    if cfg.ckpt_path:
        read_checkpoint(cfg.ckpt_path)  # a clear error for a missing, truncated or foreign file
    with build.claimed(cfg, folder, child=child, resume_from=cfg.ckpt_path):
        return _fit(cfg, folder, options, child, audit)


def _fit(cfg: DictConfig, folder: RunFolder, options: dict, child: bool, settings) -> dict[str, float]:
    # The data audit: on global rank zero, before the catalogue is saved (it may set leaked images aside).
    audit = None
    if settings.enabled and not child:
        model_options = OmegaConf.to_container(cfg.model, resolve=True)
        audit = audit_step.FitStartAudit(settings, folder, model=model_options, options=options)
    catalogue = build.catalogue(options, folder, child=child, before_save=audit)
    model = build.model(cfg, class_names=catalogue.class_names)
    prep = build.preprocessing(model.data_config, options)
    model.hparams["preprocessing"] = prep.as_dict()  # saved in checkpoints: eval, predict, export use it
    datamodule = build.datamodule(cfg, catalogue, prep, options, folder)
    trainer = build.trainer(cfg)

    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = hparams.scalar_metrics(trainer.callback_metrics)

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and cfg.train else ""
    # The best checkpoint of this fit; without training, the given checkpoint; else the weights in memory.
    evaluated = best or (None if cfg.train else cfg.ckpt_path)
    if cfg.test and "test" in catalogue.splits:
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=evaluated, weights_only=True)
        metrics.update(hparams.scalar_metrics(tested[0]) if tested else {})
    if HELDOUT in catalogue.splits:
        # K-fold job: predict the held-out fold with the same weights; the heldout-prediction
        # callback writes the probabilities for cross-validated label checks.
        trainer.predict(model, datamodule=datamodule, ckpt_path=evaluated, weights_only=True, return_predictions=False)
    datamodule.report_load_failures()
    leakage = {}
    if audit is not None and audit.set_aside:  # rank zero alone, after every collective call
        device = trainer.strategy.root_device
        leakage = audit_loops.leakage_effect(
            model, datamodule, checkpoint=evaluated, device=device, precision=trainer.precision_plugin
        )
        metrics.update(leakage)

    if trainer.is_global_zero:
        hparams.log_with_metrics(trainer, cfg, metrics)
        folder.write_json("metrics.json", metrics)
        rows = [("data", catalogue.describe())]
        if cfg.optimized_metric in metrics:
            rows.append(("best", f"{cfg.optimized_metric} = {metrics[cfg.optimized_metric]:.4f}"))
        if "test/acc" in metrics:
            rows.append(
                ("test", f"test/acc = {metrics['test/acc']:.4f}, test/f1_macro = {metrics['test/f1_macro']:.4f}")
            )
        if leakage:
            rows.append(("leakage", audit_loops.leakage_summary(leakage, audit.set_aside)))
        if audit is not None:
            rows.append(("audit", audit.summary()))
        rows += thresholds_summary(metrics)
        if best:
            rows.append(("checkpoint", best))
        rows += [row for callback in trainer.callbacks for row in getattr(callback, "summary_rows", list)()]
        folder.print_summary(rows)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with reported(), ddp.job_scope():
        metrics = train(cfg)
    # Sweepers (Optuna) maximise what this returns.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    environment.setup()
    ddp.run_job(train, main)
