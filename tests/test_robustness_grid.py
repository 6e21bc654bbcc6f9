"""The robustness grid's engine and callback: deterministic cells whatever the loader, the same pixels as the
core's corruption pipeline, macro-F1 as torchmetrics computes it, and clear errors for bad settings."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchmetrics.functional.classification import multiclass_f1_score

from callbacks.robustness_grid import RobustnessGrid, suite_digest
from datamodules.corruptions import Corrupt, load_suite, sample_seed, with_corruption
from datamodules.transforms import build_eval_transform
from evaluation.robustness import CLEAN, read_robustness_table
from evaluation.robustness_grid import GridDataset, GridSamples, grid_cells, macro_f1, score_grid, split_at_normalize
from runs import build
from runs.errors import ConfigError
from tests.checks_data import texture
from tests.conftest import ROOT

CIFAR = load_suite(ROOT / "conf" / "robustness" / "cifar.yaml")
EVAL = build_eval_transform(
    input_size=(32, 32), crop_pct=0.875, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3
)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> GridSamples:
    """Nine textured images of 40 px (the eval transform resizes and crops them), one of them unreadable."""
    root = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    paths, targets = [], []
    for i in range(9):
        label = i % 4
        path = root / f"{i}.png"
        Image.fromarray(texture(label, rng, size=40)).save(path)
        paths.append(str(path))
        targets.append(label)
    (root / "4.png").write_bytes(b"not an image")
    return GridSamples(paths, np.arange(100, 109), np.array(targets))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_convnext", pretrained=False, num_classes=4).eval()


def test_cells_cover_every_type_and_severity():
    cells = grid_cells(load_suite())
    assert cells[0] == (CLEAN, 0) and len(cells) == 1 + 14 * 5
    assert grid_cells(CIFAR, ["jpeg"]) == [(CLEAN, 0), *(("jpeg", s) for s in range(1, 6))]
    with pytest.raises(ValueError, match="not configured"):
        grid_cells(CIFAR, ["frost"])
    with pytest.raises(ValueError, match=r"\['fog'\] more than once"):  # before any image is scored
        grid_cells(CIFAR, ["fog", "jpeg", "fog"])


def test_an_item_is_exactly_what_the_core_corruption_pipeline_makes(samples):
    head, tail = split_at_normalize(EVAL)
    cells = grid_cells(CIFAR, ["gaussian_noise", "motion_blur"])
    dataset = GridDataset(samples, cells, head, tail, CIFAR, seed=3)
    assert len(dataset) == len(samples) * len(cells)
    image = np.asarray(Image.open(samples.paths[2]).convert("RGB"))
    for cell, (kind, severity) in enumerate(cells):
        item = dataset[2 * len(cells) + cell]
        assert item["index"] == 102 and item["cell"] == cell and item["target"] == samples.targets[2]
        if kind == CLEAN:
            expected = EVAL(image=image)["image"]
        else:
            pipeline = with_corruption(EVAL, Corrupt(kind, severity, CIFAR))
            expected = pipeline(image=image, corruption_seed=sample_seed(102, kind, 3))["image"]
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=0)
    assert dataset[4 * len(cells)]["error"].startswith("not an image")


def test_scores_do_not_depend_on_workers_or_batch_size(samples, model):
    cells = grid_cells(CIFAR, ["shot_noise", "zoom_blur", "jpeg"])
    one = score_grid(model, samples, EVAL, CIFAR, num_classes=4, cells=cells, batch_size=5, num_workers=0)
    two = score_grid(model, samples, EVAL, CIFAR, num_classes=4, cells=cells, batch_size=64, num_workers=2)
    np.testing.assert_array_equal(one.confusion, two.confusion)
    assert one.confusion.sum(axis=(1, 2)).tolist() == [8] * len(cells)  # the unreadable file is left out
    assert one.failed == two.failed and list(one.failed) == [104]
    assert (one.corrupt_seconds[1:] > 0).all() and one.corrupt_seconds[0] == 0  # the clean cell is not corrupted
    other_seed = score_grid(model, samples, EVAL, CIFAR, num_classes=4, cells=cells, seed=1)
    assert other_seed.confusion[0].tolist() == one.confusion[0].tolist()  # clean: no randomness at all


def test_a_model_in_another_precision_gets_its_input_cast(samples, model):
    # A 64-true (or 16-true, bf16-true) model takes its dtype: the grid casts the float32 batch
    # as Lightning's own loops do, and scores the same as in 32 bits.
    cells = grid_cells(CIFAR, ["jpeg"])
    wide = copy.deepcopy(model).double()
    with pytest.raises(RuntimeError):
        score_grid(wide, samples, EVAL, CIFAR, num_classes=4, cells=cells)
    scores = score_grid(wide, samples, EVAL, CIFAR, num_classes=4, cells=cells, convert_input=lambda x: x.double())
    np.testing.assert_array_equal(
        scores.confusion, score_grid(model, samples, EVAL, CIFAR, num_classes=4, cells=cells).confusion
    )


def test_a_refused_grid_option_is_one_line_naming_the_key():
    node = OmegaConf.load(ROOT / "conf" / "robustness" / "cifar.yaml")
    node.max_samples = 0
    with pytest.raises(ConfigError, match=r"^robustness: .*max_samples=0"):
        build.construct(node, "robustness")


def test_macro_f1_matches_torchmetrics():
    rng = np.random.default_rng(0)
    target, predicted = rng.integers(0, 5, 200), rng.integers(0, 4, 200)  # class 4 is never predicted
    confusion = np.zeros((5, 5), dtype=int)
    np.add.at(confusion, (target, predicted), 1)
    expected = multiclass_f1_score(torch.tensor(predicted), torch.tensor(target), num_classes=5, average="macro")
    assert macro_f1(confusion) == pytest.approx(float(expected))
    assert np.isnan(macro_f1(np.zeros((3, 3))))


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match=r"robustness\.max_samples=0"):
        RobustnessGrid(CIFAR, max_samples=0)
    with pytest.raises(ValueError, match=r"robustness\.split='train'"):
        RobustnessGrid(CIFAR, split="train")
    with pytest.raises(ValueError, match="not configured"):
        RobustnessGrid(CIFAR, kinds=["frost"])
    with pytest.raises(ValueError, match="CorruptionSuite"):
        RobustnessGrid({"gaussian_noise": {}})
    assert suite_digest(CIFAR) != suite_digest(load_suite()) and suite_digest(CIFAR) == suite_digest(CIFAR)


def _table(path, accuracy=0.5):
    rows = [{"corruption": CLEAN, "family": CLEAN, "severity": 0, "samples": 10, "accuracy": 0.9}]
    rows += [
        {"corruption": "jpeg", "family": "digital", "severity": s, "samples": 10, "accuracy": accuracy}
        for s in range(1, 6)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_baseline_is_read_checked_and_must_share_the_parameters(tmp_path):
    grid = RobustnessGrid(CIFAR, baseline=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"robustness\.baseline=.*no robustness table"):
        grid._read_baseline(tmp_path / "nowhere")
    reports = tmp_path / "run" / "reports"
    reports.mkdir(parents=True)
    _table(reports / "robustness.csv")
    assert len(grid._read_baseline(tmp_path / "run")) == 6  # a run folder
    assert len(grid._read_baseline(reports / "robustness.csv")) == 6  # or its CSV
    (reports / "robustness.json").write_text(json.dumps({"suite_digest": suite_digest(load_suite())}))
    with pytest.raises(ConfigError, match="other corruption parameters"):
        grid._read_baseline(tmp_path / "run")
    (reports / "robustness.json").write_text(json.dumps({"suite_digest": suite_digest(CIFAR)}))
    assert len(grid._read_baseline(tmp_path / "run")) == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accuracy": "${oc.env:HOME}"}, "column 'accuracy'"),
        ({"accuracy": 1.5}, "column 'accuracy'"),
        ({"severity": 2.5}, "column 'severity'"),
        ({"corruption": "frost_bite"}, "unknown corruption type"),
    ],
)
def test_a_baseline_table_with_odd_values_is_refused(tmp_path, change, message):
    path = _table(tmp_path / "robustness.csv")
    table = pd.read_csv(path)
    for column, value in change.items():
        table[column] = table[column].astype(object)
        table.loc[3, column] = value
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match=message):
        read_robustness_table(path)


def _trainer(side: int, splits=("train", "val", "test")):
    from types import SimpleNamespace

    datamodule = SimpleNamespace(
        class_names=["a", "b"],
        samples={key: [] for key in splits},
        targets=lambda split: np.zeros(0, dtype=int),
        preprocessing=SimpleNamespace(input_size=(side, side)),
    )
    return SimpleNamespace(datamodule=datamodule, is_global_zero=True)


def test_setup_says_when_the_parameters_do_not_suit_the_input_size(caplog):
    with caplog.at_level("WARNING", logger="callbacks.robustness_grid"):
        RobustnessGrid(load_suite()).setup(_trainer(64), None, "test")  # ImageNet-C values on 64 px
        assert "robustness=cifar is tuned for inputs of this size" in caplog.text
        caplog.clear()
        RobustnessGrid(CIFAR).setup(_trainer(224), None, "test")
        assert "robustness=default is tuned" in caplog.text
        caplog.clear()
        RobustnessGrid(CIFAR).setup(_trainer(64), None, "test")
        RobustnessGrid(load_suite()).setup(_trainer(224), None, "test")
        assert caplog.text == ""
        RobustnessGrid(CIFAR).setup(_trainer(64, splits=("train", "val")), None, "fit")
        assert "data.test_fraction=0.1" in caplog.text  # in training, the grid needs a test split
