"""Export a checkpoint to ONNX or TorchScript, with the JSON sidecar that says how to use it.

    python export.py ckpt_path=<run>/checkpoints/best.ckpt                       # ONNX
    python export.py ckpt_path=... format=torchscript output=/srv/models/drone.pt
    python export.py ckpt_path=... 'predict.blocked_classes=[person]'            # never emitted by the export

Beside the model go its sidecar (``<model>.json``: classes, preprocessing, temperature, per-class
thresholds, blocked classes) and, when the run saved one, its unfamiliar-input index
(``<model>.familiarity/``). The export is then checked against PyTorch on the run's own validation
images (``verify``) and the largest probability difference is printed. ``predict.py model=<file>``
runs it with the same filtering as the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy.special import softmax

from datamodules import Catalogue, ImageDataModule, LoaderOptions
from inference import prediction, run_files
from inference.decisions import OutputPolicy
from inference.export import SUFFIXES, ExportedClassifier, export_classifier
from inference.sidecar import MODEL_FORMATS, sidecar_path
from runs import build, ddp, environment
from runs.checkpoints import read_checkpoint
from runs.errors import ConfigError, ExportError, reported
from runs.folder import RunFolder

# The largest probability difference an export may show against PyTorch on the same images.
PARITY_TOLERANCE = 1e-4


def export(cfg: DictConfig) -> dict:
    """Exports ``cfg.ckpt_path``; returns what ``reports/export.json`` records."""
    if cfg.format not in MODEL_FORMATS:
        raise ConfigError(f"format={cfg.format!r} must be one of {list(MODEL_FORMATS)}.")
    if not isinstance(cfg.verify, int) or cfg.verify < 0:
        raise ConfigError(f"verify={cfg.verify!r} must be a number of validation images (0: skip the check).")
    opts = OmegaConf.to_container(cfg.predict, resolve=True)
    blocked = run_files.class_list(opts["blocked_classes"])
    trained = read_checkpoint(cfg.ckpt_path)
    try:  # the checks predict.py makes of the same setting: known classes, not every one
        OutputPolicy(tuple(trained.class_names), blocked_classes=blocked)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    found = run_files.for_checkpoint(
        trained.run_dir, trained.epoch, trained.class_names, opts["thresholds"], opts["familiarity"]
    )
    if found.familiarity is not None and not cfg.embedding:
        raise ConfigError(
            "the unfamiliar-input index needs the embedding output: embedding=true, or export without the index "
            "with predict.familiarity=null."
        )
    with build.claimed(cfg, RunFolder(cfg.paths.output_dir)) as folder:
        return _export(cfg, folder, trained, found, blocked)


def _export(cfg: DictConfig, folder: RunFolder, trained, found, blocked: list[str]) -> dict:
    model = prediction.checkpoint_model(trained, "cpu")
    temperature = model.temperature = trained.temperature or found.temperature or 1.0
    path = Path(cfg.output) if cfg.output else folder.root / f"model{SUFFIXES[cfg.format]}"
    path = path.expanduser().absolute()
    export_classifier(
        model.module.backbone,
        path,
        model_format=cfg.format,
        classes=trained.class_names,
        preprocessing=model.preprocessing,
        temperature=temperature,
        thresholds=found.thresholds,
        blocked_classes=blocked,
        source_checkpoint=str(trained.path),
        embedding=bool(cfg.embedding),
        familiarity=found.familiarity,
    )
    delta, checked = verify(model, ExportedClassifier(path), trained.run_dir, cfg.verify)
    record = {
        "model": str(path),
        "sidecar": str(sidecar_path(path)),
        "format": cfg.format,
        "checkpoint": str(trained.path),
        "epoch": trained.epoch,
        "temperature": temperature,
        "thresholds": found.thresholds_from,
        "familiarity": found.familiarity_from,
        "blocked_classes": blocked,
        "verified_images": checked,
        "max_abs_delta_probability": delta,
        "notes": found.notes,
    }
    folder.write_json("export.json", record)
    parity = "not checked (verify=0 or no validation images)"
    if checked:
        verdict = "within" if delta <= PARITY_TOLERANCE else "EXCEEDS"
        parity = f"max |delta probability| {delta:.1e} on {checked} validation images ({verdict} {PARITY_TOLERANCE:g})"
    rows = [
        ("checkpoint", f"{trained.path} (epoch {trained.epoch}, {trained.name})"),
        ("model", str(path)),
        (
            "sidecar",
            f"{sidecar_path(path)} (temperature {temperature:.3f}, thresholds {found.thresholds_from}, "
            f"blocked {blocked})",
        ),
        ("familiarity", found.familiarity_from),
        ("parity", parity),
        *(("note", note) for note in found.notes),
    ]
    folder.print_summary(rows, review=f"python predict.py model={path} input=DIR")
    if checked and not delta <= PARITY_TOLERANCE:
        raise ExportError(
            f"the exported model's probabilities differ from the checkpoint's by up to {delta:.1e} on {checked} "
            f"validation images, more than {PARITY_TOLERANCE:g}: do not use {path}. Try the other format "
            "(format=onnx or format=torchscript)."
        )
    return record


def verify(model: prediction.PredictionModel, exported: ExportedClassifier, run_dir, count: int) -> tuple[float, int]:
    """The largest |probability difference| between PyTorch and the export on up to ``count`` validation
    images of the checkpoint's run (the evaluation transform, as predict.py uses); ``(nan, 0)`` when the run
    has no saved validation samples."""
    catalogue_file = run_dir / "catalogue.json"
    if count == 0 or not catalogue_file.is_file():
        return float("nan"), 0
    catalogue = Catalogue.load(catalogue_file)
    val = catalogue.splits.get("val", [])[:count]
    if not val:
        return float("nan"), 0
    catalogue.splits = {"val": val}
    data = ImageDataModule(catalogue, model.preprocessing, loader=LoaderOptions(eval_batch_size=32, num_workers=0))
    delta, checked = 0.0, 0
    for batch in data.val_dataloader():
        images = batch["image"]
        if not images.numel():
            continue
        expected = softmax(model.outputs(images)[0].astype(np.float64) / model.temperature, axis=1)
        delta = max(delta, float(np.abs(exported.probabilities(images) - expected).max()))
        checked += len(images)
    return delta, checked


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with reported(), ddp.job_scope():
        export(cfg)


if __name__ == "__main__":
    environment.setup()
    ddp.run_job(export, main)
