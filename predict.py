"""Label new images with a trained model, showing only what may be shown.

    python predict.py ckpt_path=<run>/checkpoints/best.ckpt input=DIR|FILE.csv|IMAGE
    python predict.py model=<export>/model.onnx input=DIR        # an export, through onnxruntime
    python predict.py ckpt_path=... input=DIR rank=label_next    # also: which images to label first
    python predict.py ckpt_path=... input=DIR 'predict.blocked_classes=[person]' predict.min_confidence=0.6

No labels needed. Classes, architecture, preprocessing and temperature come from the checkpoint
(or the export's sidecar); per-class thresholds and the unfamiliar-input index from its training
run. Writes ``predictions.csv`` (one row per readable image), ``reports/summary.json`` and
``reports/unreadable.csv`` into ``logs/predict/runs/<timestamp>/``.
"""

from __future__ import annotations

import sys

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules import PREDICT, Catalogue, ImageDataModule, LoaderOptions
from datamodules.image_io import SCAN_MODES
from inference import prediction, run_files
from inference.active_learning import UNCERTAINTY_METHODS, rank_label_next, write_label_next
from inference.decisions import OutputPolicy
from runs import build, ddp, environment
from runs.checkpoints import read_checkpoint
from runs.errors import ConfigError, reported
from runs.folder import RunFolder

RANKINGS = (None, "label_next")


def predict(cfg: DictConfig) -> dict:
    """Predicts ``cfg.input``; returns the summary written to ``reports/summary.json``."""
    if OmegaConf.is_missing(cfg, "input"):
        raise ConfigError(
            "give the images to predict: input=DIR (any depth), input=FILE.csv (a path column) or input=IMAGE."
        )
    opts = OmegaConf.to_container(cfg.predict, resolve=True)
    opts["blocked_classes"] = run_files.class_list(opts["blocked_classes"])  # also one name without brackets
    if cfg.rank not in RANKINGS:
        raise ConfigError(f"rank={cfg.rank!r}: the only ranking is rank=label_next (or leave rank unset).")
    if opts["uncertainty"] not in UNCERTAINTY_METHODS:
        raise ConfigError(f"predict.uncertainty={opts['uncertainty']!r} must be one of {UNCERTAINTY_METHODS}.")
    budget = opts["label_budget"]
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ConfigError(f"predict.label_budget={budget!r} must be a positive number of images.")
    if cfg.data.scan not in SCAN_MODES:
        raise ConfigError(f"data.scan={cfg.data.scan!r} must be one of {list(SCAN_MODES)}.")
    model, found = _model(cfg, opts)
    if cfg.rank and not model.has_embedding:
        raise ConfigError("rank=label_next needs the model's embeddings: export with embeddings (the default).")
    blocked = {*model.blocked_classes, *opts["blocked_classes"]}
    if found.familiarity is not None:
        _check_index(model, found)
    try:
        policy = OutputPolicy(
            tuple(model.class_names),
            blocked_classes=blocked,
            min_confidence=float(opts["min_confidence"]),
            class_thresholds=found.thresholds,
            top_k=int(opts["top_k"]),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    loader = LoaderOptions(
        batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers
    )
    catalogue = Catalogue.for_prediction(cfg.input, class_names=model.class_names, scan=cfg.data.scan)

    with build.claimed(cfg, RunFolder(cfg.paths.output_dir)) as folder:
        return _run(cfg, opts, folder, model, found, policy, catalogue, loader)


def _check_index(model: prediction.PredictionModel, found: run_files.RunFiles) -> None:
    """The unfamiliar-input index fits the model: it has a threshold, and the model gives embeddings
    of its width (one image of the model's input size is run to see).

    Raises:
        ConfigError: it does not.
    """
    index = found.familiarity
    where = f"the unfamiliar-input index ({found.familiarity_from})"
    if not model.has_embedding:
        raise ConfigError(
            f"{where} needs the model's embeddings, but this export has none: export with embedding=true, "
            "or predict.familiarity=null."
        )
    if index.threshold is None:
        raise ConfigError(f"{where} has no threshold (it was never calibrated on validation images).")
    height, width = model.preprocessing.input_size
    _, embedding = model.run(torch.zeros(1, 3, height, width))
    if embedding is None or embedding.shape[1] != index.dim:
        got = "none" if embedding is None else f"{embedding.shape[1]} values"
        raise ConfigError(
            f"{where} was built on embeddings of {index.dim} values; this model gives {got}. Use the index of the "
            "run the model comes from, or predict.familiarity=null."
        )


def _model(cfg: DictConfig, opts: dict) -> tuple[prediction.PredictionModel, run_files.RunFiles]:
    if bool(cfg.ckpt_path) == bool(cfg.model_file):
        raise ConfigError(
            "give one model: ckpt_path=<run>/checkpoints/best.ckpt (a training checkpoint) or model=<file>.onnx "
            "(an export with its sidecar)."
        )
    if cfg.model_file:
        try:
            model = prediction.exported_model(cfg.model_file)
        except FileNotFoundError as err:
            raise ConfigError(f"{err}: give the exported model file (its sidecar <file>.json beside it).") from None
        except ValueError as err:
            raise ConfigError(f"model={cfg.model_file}: {err}") from None
        found = run_files.RunFiles(thresholds=model.thresholds, thresholds_from="the sidecar")
        found.familiarity, found.familiarity_from = model.familiarity, "beside the model"
        if opts["thresholds"] != run_files.AUTO:
            off = run_files.off(opts["thresholds"])
            found.thresholds = {} if off else run_files.thresholds_file(opts["thresholds"], model.class_names)
            found.thresholds_from = "off" if off else str(opts["thresholds"])
        if opts["familiarity"] != run_files.AUTO:
            off = run_files.off(opts["familiarity"])
            found.familiarity = None if off else run_files.index_folder(opts["familiarity"])
            found.familiarity_from = "off" if off else str(opts["familiarity"])
        if found.familiarity is None:
            found.familiarity_from = "none"
        return model, found
    trained = read_checkpoint(cfg.ckpt_path)
    found = run_files.for_checkpoint(
        trained.run_dir, trained.epoch, trained.class_names, opts["thresholds"], opts["familiarity"]
    )
    model = prediction.checkpoint_model(trained, _device(cfg.device))
    if trained.temperature is None and found.temperature is not None:
        model.temperature = found.temperature  # the run's calibration, as recorded with its thresholds
    return model, found


def _device(setting: str) -> str:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if setting == "auto" else str(setting)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ConfigError(f"device={setting!r} cannot be used here ({err}); give device=cpu or device=auto.") from None
    return device


def _run(cfg, opts, folder: RunFolder, model, found, policy, catalogue: Catalogue, loader) -> dict:
    samples = catalogue.splits.get(PREDICT, [])
    paths = [s.path for s in samples]
    failures = []

    def failed(index: int, reason: str) -> None:
        failures.append({"path": paths[index], "label": "", "split": PREDICT, "reason": reason, "found_by": "load"})

    batches = ImageDataModule(catalogue, model.preprocessing, loader=loader).predict_dataloader() if samples else []
    totals = prediction.predict(
        model,
        batches,
        paths,
        policy,
        folder.root / "predictions.csv",
        familiarity=found.familiarity,
        keep=bool(cfg.rank),
        progress=bool(cfg.progress),
        on_failure=failed,
    )
    catalogue.add_load_failures(failures)
    catalogue.write_unreadable(folder)
    if cfg.rank and totals.positions:
        order = np.concatenate(totals.positions)
        probs, embeddings = np.concatenate(totals.probabilities), np.concatenate(totals.embeddings)
        train = found.familiarity.embeddings if found.familiarity is not None else None
        ranking = rank_label_next(
            probs, embeddings, method=opts["uncertainty"], train_embeddings=train, budget=int(opts["label_budget"])
        )
        write_label_next(
            folder.root / "label_next.csv",
            ranking,
            [paths[i] for i in order],
            probs,
            model.class_names,
            method=opts["uncertainty"],
            blocked_classes=policy.blocked_classes,
        )
    summary = {
        "model": model.description,
        "input": catalogue.location,
        "found": catalogue.summary["found"],
        "unreadable": len(catalogue.unreadable),
        **totals.summary(),
        "blocked_classes": sorted(policy.blocked_classes),
        "min_confidence": policy.min_confidence,
        "temperature": model.temperature,
        "thresholds": found.thresholds_from,
        "familiarity": found.familiarity_from,
        "distance_threshold": found.familiarity.threshold if found.familiarity is not None else None,
        "notes": found.notes,
    }
    folder.write_json("summary.json", summary)
    _print_summary(folder, summary, ranked=bool(cfg.rank))
    return summary


def _print_summary(folder: RunFolder, summary: dict, *, ranked: bool) -> None:
    decisions = ", ".join(f"{k} {v}" for k, v in summary["decisions"].items())
    labels = ", ".join(f"{k} {v}" for k, v in list(summary["labels"].items())[:8]) or "none"
    speed = summary["images_per_second"]
    rows = [
        ("model", summary["model"]),
        (
            "input",
            f"{summary['input']}: {summary['found']} found, {summary['predicted']} predicted, "
            f"{summary['unreadable']} unreadable (reports/unreadable.csv)",
        ),
        ("decisions", decisions),
        ("labels", labels + (" ..." if len(summary["labels"]) > 8 else "")),
        (
            "filtering",
            f"blocked {summary['blocked_classes']}, min_confidence {summary['min_confidence']}, "
            f"thresholds {summary['thresholds']}, temperature {summary['temperature']:.3f}",
        ),
        ("unfamiliar", f"{summary['unfamiliar']} flagged (index: {summary['familiarity']})"),
        ("speed", f"{speed} images/s" if speed else "-"),
        *(("note", note) for note in summary["notes"]),
    ]
    if ranked and (folder.root / "label_next.csv").is_file():
        rows.append(("label next", str(folder.root / "label_next.csv")))
    folder.print_summary(rows, review=str(folder.root / "predictions.csv"))


def command_line(argv: list[str]) -> list[str]:
    """``model=FILE`` names the exported model, but ``model`` is also the config group of training's
    model: Hydra would read it as a group choice, so it is passed on as ``model_file=FILE``."""
    return [f"model_file={a.split('=', 1)[1]}" if a.startswith("model=") else a for a in argv]


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with reported(), ddp.job_scope():
        predict(cfg)


if __name__ == "__main__":
    environment.setup()
    sys.argv = command_line(sys.argv)
    ddp.run_job(predict, main)
