"""export.py from a real (tiny) training run: parity with PyTorch on the run's validation images, a sidecar
that carries the run's classes, preprocessing, temperature, thresholds and blocked classes, and
predict.py running the export with the same filtering as the checkpoint."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.special import softmax

from datamodules import Catalogue, ImageDataModule, LoaderOptions
from inference.export import ExportedClassifier
from inference.familiarity import FamiliarityIndex
from inference.prediction import checkpoint_model
from inference.sidecar import read_sidecar, sidecar_path
from runs.checkpoints import read_checkpoint
from runs.errors import ConfigError
from tests.conftest import compose_config, run_cli


def run_export(trained, tmp_path, *overrides: str):
    from export import export

    run_dir, _, _ = trained
    cfg = compose_config(
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"paths.output_dir={tmp_path / 'export'}", *overrides],
        config_name="export",
    )
    return export(cfg)


def _val_batches(run_dir, preprocessing):
    catalogue = Catalogue.load(run_dir / "catalogue.json")
    catalogue.splits = {"val": catalogue.splits["val"]}
    return ImageDataModule(catalogue, preprocessing, loader=LoaderOptions(eval_batch_size=16, num_workers=0))


@pytest.mark.parametrize("model_format", ["onnx", "torchscript"])
def test_the_export_matches_pytorch_on_real_validation_images(trained, tmp_path, model_format):
    run_dir, _, _ = trained
    record = run_export(trained, tmp_path, f"format={model_format}")
    assert record["verified_images"] == len(Catalogue.load(run_dir / "catalogue.json").splits["val"])
    assert record["max_abs_delta_probability"] <= 1e-4
    # Checked here again, independently of export.py's own check, embeddings included.
    model = checkpoint_model(read_checkpoint(run_dir / "checkpoints" / "best.ckpt"), "cpu")
    exported = ExportedClassifier(record["model"])
    deltas, emb_deltas, confident = [], [], []
    for batch in _val_batches(run_dir, model.preprocessing).val_dataloader():
        logits, embedding = model.outputs(batch["image"])
        expected = softmax(logits.astype(np.float64) / exported.sidecar.temperature, axis=1)
        got_logits, got_embedding = exported.outputs(batch["image"])
        deltas.append(
            np.abs(softmax(got_logits.astype(np.float64) / exported.sidecar.temperature, axis=1) - expected).max()
        )
        emb_deltas.append(np.abs(got_embedding - embedding).max() / np.abs(embedding).max())
        confident.append(expected.max(axis=1).mean())
    assert max(deltas) <= 1e-4 and max(emb_deltas) <= 1e-4
    assert np.mean(confident) > 0.15  # far from uniform (0.1): the comparison means something


def test_the_sidecar_carries_the_runs_files(trained, tmp_path):
    run_dir, _, _ = trained
    record = run_export(trained, tmp_path, "predict.blocked_classes=[digit_3,digit_5]", "verify=0")
    sidecar = read_sidecar(sidecar_path(record["model"]))
    trained_ckpt = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert (
        list(sidecar.classes) == trained_ckpt.class_names == json.loads((run_dir / "reports/classes.json").read_text())
    )
    assert sidecar.preprocessing.as_dict() == trained_ckpt.preprocessing
    assert sidecar.blocked_classes == ("digit_3", "digit_5")
    assert sidecar.temperature == json.loads((run_dir / "reports" / "thresholds.json").read_text())["temperature"]
    with open(run_dir / "reports" / "thresholds.csv", newline="") as f:
        expected = {
            r["class"]: float(r["threshold"]) if r["reached"] == "true" else math.inf for r in csv.DictReader(f)
        }
    assert sidecar.thresholds == expected
    assert sidecar.outputs == ("logits", "embedding") and record["verified_images"] == 0
    index, original = ExportedClassifier(record["model"]).familiarity(), FamiliarityIndex.load(run_dir / "familiarity")
    assert index.threshold == original.threshold and np.array_equal(index.embeddings, original.embeddings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=pickle"], r"format='pickle' must be one of \['onnx', 'torchscript'\]"),
        (["predict.blocked_classes=[cat]"], r"predict.blocked_classes=\['cat'\] names classes the model does not have"),
        (["embedding=false"], "the unfamiliar-input index needs the embedding output"),
        ([f"predict.blocked_classes=[{','.join(f'digit_{c}' for c in range(10))}]"], "blocks every class"),
    ],
)
def test_export_mistakes_are_named(trained, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_export(trained, tmp_path, *overrides)


@pytest.mark.slow
def test_predict_runs_the_export_like_the_checkpoint(trained, tmp_path):
    """As a user types it: export.py, then predict.py model=<file>.onnx; decisions and probabilities agree
    with predict.py on the checkpoint, and the sidecar's blocked class is withheld."""
    run_dir, _, _ = trained
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    images = run_dir / "val.csv"
    val = Catalogue.load(run_dir / "catalogue.json").splits["val"]
    images.write_text("path\n" + "".join(f"{s.path}\n" for s in val))
    common = [f"input={images}", "predict.thresholds=null", "progress=false", "data.num_workers=0"]
    run_cli(
        ["export.py", f"ckpt_path={checkpoint}", "predict.blocked_classes=[digit_4]", f"hydra.run.dir={tmp_path}/e"]
    )
    run_cli(["predict.py", f"model={tmp_path}/e/model.onnx", *common, f"hydra.run.dir={tmp_path}/onnx"])
    run_cli(["predict.py", f"ckpt_path={checkpoint}", "predict.blocked_classes=[digit_4]", *common,
             f"hydra.run.dir={tmp_path}/ckpt"])  # fmt: skip
    rows = {}
    for name in ("onnx", "ckpt"):
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["onnx"]) == len(rows["ckpt"]) == len(val)
    for a, b in zip(rows["onnx"], rows["ckpt"], strict=True):
        assert (a["path"], a["decision"], a["label"], a["class_1"], a["unfamiliar"]) == (
            b["path"], b["decision"], b["label"], b["class_1"], b["unfamiliar"]
        )  # fmt: skip
        if a["decision"] != "withheld":
            assert abs(float(a["probability_1"]) - float(b["probability_1"])) <= 1e-4
    assert any(r["decision"] == "withheld" for r in rows["onnx"])
    assert all("digit_4" not in r[c] for r in rows["onnx"] for c in ("label", "class_1", "class_2", "class_3"))
