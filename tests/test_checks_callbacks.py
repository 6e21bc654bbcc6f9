"""The slice, calibration and activation-map panels in a real run (the shared tiny run), read back from its
event files, reports and checkpoint; the helpers they rely on; and their argument checks."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks.activation_maps import ActivationMaps
from callbacks.calibration import Calibration, add_temperature, saved_temperature
from callbacks.slice_metrics import SliceMetrics
from evaluation.slice_properties import PROPERTY_COLUMNS, image_property_table, measure
from evaluation.slices import SLICE_COLUMNS
from runs.checkpoints import read_checkpoint


@pytest.fixture(scope="module")
def events(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(trained[0] / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0}
    )
    accumulator.Reload()
    return accumulator


def _text(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def test_panels_are_logged_every_epoch_and_at_test(events):
    for tag in ("slices", "reliability", "activation_maps_errors", "activation_maps_correct"):
        assert [e.step for e in events.Images(f"val/{tag}")] == [0, 1, 2], tag
        assert len(events.Images(f"test/{tag}")) == 1, tag
    figure = events.Images("val/reliability")[-1]
    pixels = np.asarray(Image.open(io.BytesIO(figure.encoded_image_string)))
    assert pixels.shape[0] >= 500 and pixels.std() > 10
    assert [e.step for e in events.Scalars("val/ece")] == [0, 1, 2]
    assert 0 <= events.Scalars("test/ece")[-1].value <= 1
    gallery = events.Images("test/activation_maps_correct")[-1]
    assert gallery.width >= 8 * 112  # four (input, map) pairs per row


def test_slices_csv_covers_the_image_properties(trained, events):
    with open(trained[0] / "reports" / "test" / "slices.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(SLICE_COLUMNS)
    columns = {r["column"] for r in rows}
    # Digits from a folder have no metadata; all are 24 px, so size gives no slice (one value only).
    assert columns == {"image_brightness", "image_contrast", "image_sharpness"}
    for column in columns:
        assert sum(int(r["count"]) for r in rows if r["column"] == column) == 30  # the test split
    accuracies = [float(r["accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies)
    text = _text(events, "test/slices")
    assert "Overall accuracy" in text and "`image_size_px` (one value only)" in text


def test_temperature_is_saved_in_the_best_checkpoint_and_the_report(trained, events):
    run_dir = trained[0]
    record = json.loads((run_dir / "reports" / "calibration.json").read_text())
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert checkpoint.temperature == pytest.approx(record["temperature"]) and record["temperature"] > 0
    assert record["evaluated_on"] == "test" and record["samples_evaluated"] == 30
    assert record["fitted_on"] == "val" and record["samples_fitted"] == 60
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(record)
    assert record["nll_after"] <= record["nll_before"] + 0.05  # fitted on val, measured on test
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt").temperature is None  # other weights
    assert "Test ECE" in _text(events, "test/calibration")
    assert [e.step for e in events.Scalars("test/ece_calibrated")] == [events.Scalars("test/ece")[-1].step]


def test_add_temperature_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)
    assert saved_temperature(path) is None
    add_temperature(path, 1.7)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["temperature"] == 1.7 and checkpoint["epoch"] == 3
    assert torch.equal(checkpoint["state_dict"]["w"], torch.ones(2))
    assert saved_temperature(path) == 1.7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]  # no temporary file left
    torch.save({"temperature": "2.0"}, tmp_path / "odd.ckpt")
    assert saved_temperature(tmp_path / "odd.ckpt") is None  # not a number: ignored


def _jpeg_with_orientation(path, array, orientation):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)


def test_image_properties_are_cheap_and_close_to_a_full_decode(tmp_path):
    from data_audit.properties import image_properties, working_copy
    from datamodules.image_io import read_rgb

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1200, 0:1600]
    photo = (np.stack([x / 7, y / 5, (x + y) / 11], axis=-1) % 255).astype(np.uint8)
    photo = np.clip(photo.astype(int) + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
    _jpeg_with_orientation(tmp_path / "rotated.jpg", photo, 6)  # stored landscape, shown portrait
    Image.fromarray(photo[:40, :60]).save(tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    fast = measure(str(tmp_path / "rotated.jpg"), ["brightness", "contrast", "sharpness", "size"])
    full = image_properties(working_copy(read_rgb(tmp_path / "rotated.jpg")))
    assert fast[0] == pytest.approx(full["brightness"], abs=2)
    assert fast[1] == pytest.approx(full["contrast"], rel=0.05)
    assert fast[2] == pytest.approx(full["sharpness"], rel=0.35)  # the reduced-scale decode is a little softer
    assert fast[3] == 1200.0
    table = image_property_table([str(tmp_path / n) for n in ("small.png", "broken.jpg", "rotated.jpg")])
    assert list(table.columns) == list(PROPERTY_COLUMNS.values())
    assert table["image_size_px"].tolist()[0] == 40 and table.iloc[1].isna().all()


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        SliceMetrics(properties=["brightness", "loudness"])
    with pytest.raises(ValueError, match="bins=1"):
        SliceMetrics(bins=1)
    with pytest.raises(ValueError, match="shortcut_alpha"):
        SliceMetrics(shortcut_alpha=2)
    with pytest.raises(ValueError, match="n_bins=1"):
        Calibration(n_bins=1)
    with pytest.raises(ValueError, match="<= 64"):
        ActivationMaps(correct_per_class=5, max_classes=20)
    with pytest.raises(ValueError, match="alpha"):
        ActivationMaps(alpha=1.5)
    with pytest.raises(ValueError, match="every_n_epochs=-1"):
        Calibration(every_n_epochs=-1)


def test_eval_of_a_checkpoint_without_a_temperature_fits_one_on_its_validation_split(trained, tmp_path):
    from eval import evaluate
    from tests.conftest import compose_config

    last = trained[0] / "checkpoints" / "last.ckpt"  # saved every epoch: never given a temperature
    out = tmp_path / "eval"
    cfg = compose_config(
        [f"ckpt_path={last}", "trainer=cpu", "+trainer.enable_progress_bar=false", "data.num_workers=0",
         "callbacks.activation_maps=null", "callbacks.embedding_projector=null", f"paths.output_dir={out}"],
        config_name="eval",
    )  # fmt: skip
    evaluate(cfg)
    record = json.loads((out / "reports" / "calibration.json").read_text())
    assert record["source"] == "fitted on the 60 validation samples evaluated before the test split"
    assert record["samples_fitted"] == 60 and record["samples_evaluated"] == 30 and record["temperature"] > 0
    assert read_checkpoint(last).temperature is None  # evaluating never writes into the checkpoint
    with open(out / "reports" / "val" / "slices.csv") as f:
        assert sum(int(r["count"]) for r in csv.DictReader(f) if r["column"] == "image_brightness") == 60


def test_a_temperature_can_be_fitted_where_lightning_runs_test_hooks():
    from evaluation.calibration import fit_temperature

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 200)
    logits = np.eye(3)[targets] * 2 + rng.normal(0, 1.5, (200, 3))
    expected = fit_temperature(logits, targets)
    with torch.inference_mode():  # as in on_test_epoch_end
        assert fit_temperature(torch.tensor(logits), torch.tensor(targets)) == pytest.approx(expected)


def test_a_bf16_run_keeps_its_own_passes_in_the_models_precision(tiny_cfg):
    # The activation maps and the unfamiliar-input index run the backbone outside Lightning's
    # loops: they cast their float32 batches as those loops do, or a bf16-true model refuses them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train import train

    cfg = tiny_cfg("trainer.precision=bf16-true", "trainer.max_epochs=1", "audit=off")
    train(cfg)
    run_dir = cfg.paths.output_dir
    events = EventAccumulator(f"{run_dir}/tensorboard", size_guidance={"images": 0})
    events.Reload()
    assert {"val/activation_maps_errors", "val/activation_maps_correct"} <= set(events.Tags()["images"])
    embeddings = np.load(f"{run_dir}/familiarity/train_embeddings.npy")
    assert embeddings.dtype == np.float32 and len(embeddings) > 0 and np.isfinite(embeddings).all()
