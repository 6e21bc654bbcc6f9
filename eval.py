"""Evaluate a checkpoint on the validation and test splits, with every review panel.

    python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt     # the run's own samples
    python eval.py ckpt_path=... data=folder data.root=~/other_shots          # other data, same classes
    python eval.py ckpt_path=... robustness=cifar                             # + the corruption grid

With nothing else typed, the samples, classes and preprocessing come from the checkpoint and its
run folder (``<run>/catalogue.json``). The checkpoint is read with ``torch.load(weights_only=True)``
and its values are checked as plain types before use; the validation metrics it was saved with
are printed beside the ones measured now.
"""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig

from datamodules import DataError
from runs import build, ddp, environment, hparams
from runs.checkpoints import read_checkpoint
from runs.errors import ConfigError, reported
from runs.folder import RunFolder


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Evaluates ``cfg.ckpt_path`` on ``cfg.splits``; returns ``{split: metrics}``."""
    L.seed_everything(cfg.seed, workers=True)
    trained = read_checkpoint(cfg.ckpt_path)
    folder = RunFolder(cfg.paths.output_dir)
    child = build.is_child()
    options = build.data_options(cfg)
    build.loader_options(options)
    unknown = [s for s in cfg.splits if s not in ("val", "test")]
    if unknown:
        raise ConfigError(f"splits: {unknown} are not among val, test.")
    if options["source"] == "run" and not options.get("run_dir"):
        options["run_dir"] = str(trained.run_dir)  # the checkpoint's own run
    with build.claimed(cfg, folder, child=child):
        return _evaluate(cfg, folder, options, trained, child)


def _evaluate(cfg, folder: RunFolder, options: dict, trained, child: bool) -> dict[str, dict[str, float]]:
    catalogue = build.catalogue(options, folder, child=child)
    if catalogue.class_names != trained.class_names:
        raise DataError(
            f"the checkpoint was trained on {len(trained.class_names)} classes {trained.class_names[:10]}, but this "
            f"data has {len(catalogue.class_names)}: {catalogue.class_names[:10]}. Evaluate on data with the same "
            "classes."
        )
    prep = build.preprocessing(trained.preprocessing, options)
    # Architecture and what changes the loss come from the checkpoint, as plain arguments.
    kept = {k: trained.hyper_parameters[k] for k in ("label_smoothing", "drop_rate") if k in trained.hyper_parameters}
    model = build.model(cfg, class_names=trained.class_names, name=trained.name, preprocessing=prep.as_dict(), **kept)
    datamodule = build.datamodule(cfg, catalogue, prep, options, folder)
    trainer = build.trainer(cfg)
    if cfg.get("robustness") is not None:
        trainer.callbacks.append(_robustness_grid(cfg, catalogue))

    results: dict[str, dict[str, float]] = {}
    for split in cfg.splits:
        if split not in catalogue.splits:
            if trainer.is_global_zero:
                print(f"skipping {split}: this data has no {split} split")
            continue
        run = {"val": trainer.validate, "test": trainer.test}[split]
        out = run(model, datamodule=datamodule, ckpt_path=str(trained.path), weights_only=True)
        results[split] = hparams.scalar_metrics(out[0]) if out else {}
    datamodule.report_load_failures()

    if trainer.is_global_zero:
        folder.write_json("metrics.json", {**results, "saved_val_metrics": trained.val_metrics})
        rows = [
            ("checkpoint", f"{trained.path} (epoch {trained.epoch}, {trained.name})"),
            ("data", catalogue.describe()),
        ]
        for key, now in results.get("val", {}).items():
            if key in trained.val_metrics:
                rows.append((key, f"now {now:.4f}   saved with checkpoint {trained.val_metrics[key]:.4f}"))
        rows += [(key, f"{now:.4f}") for key, now in results.get("test", {}).items()]
        rows += [row for callback in trainer.callbacks for row in getattr(callback, "summary_rows", list)()]
        folder.print_summary(rows)
    return results


def _robustness_grid(cfg: DictConfig, catalogue):
    """The corruption grid (``robustness=...``) on the test split, or on val when test is not evaluated."""
    evaluated = [s for s in cfg.splits if s in catalogue.splits]
    split = cfg.robustness.get("split") or ("test" if "test" in evaluated else "val")
    if split not in evaluated:
        raise ConfigError(
            f"robustness.split={split} is not evaluated here (splits={list(cfg.splits)}, the data has "
            f"{sorted(catalogue.splits)}): add it to splits, or set robustness.split to one that is."
        )
    return build.construct(cfg.robustness, "robustness", split=split)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with reported(), ddp.job_scope():
        evaluate(cfg)


if __name__ == "__main__":
    environment.setup()
    ddp.run_job(evaluate, main)
