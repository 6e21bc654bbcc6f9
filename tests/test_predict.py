"""predict.py on a held-out folder, from the checkpoint of a real (tiny) training run on other images of
the same classes: one row per readable image, unreadable files listed, blocked classes never shown,
abstention, thresholds, unfamiliar inputs and the "label these next" ranking."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.decisions import DECISIONS
from inference.familiarity import unfamiliar_auroc
from inference.run_files import for_checkpoint
from runs.errors import ConfigError
from tests.conftest import compose_config, write_digits


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    """Digits the run never saw (another draw), nested one level deeper, with three broken files among them."""
    root = tmp_path_factory.mktemp("heldout")
    write_digits(root / "batch_1", per_class=6, seed=11)
    (root / "batch_1" / "empty.jpg").write_bytes(b"")
    (root / "error_page.jpg").write_text("<html>503 Service Unavailable</html>")
    good = next((root / "batch_1" / "digit_3").iterdir())
    (root / "truncated.png").write_bytes(good.read_bytes()[:60])
    readable = sorted(str(p.resolve()) for p in root.rglob("d*.png"))
    broken = {"empty.jpg": "empty file", "error_page.jpg": "not an image", "truncated.png": "truncated or corrupt"}
    return root, readable, broken


def run_predict(trained, tmp_path, *overrides: str, name: str = "predict"):
    from predict import predict

    run_dir, _, _ = trained
    out = tmp_path / name
    cfg = compose_config(
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            f"paths.output_dir={out}",
            "progress=false",
            "data.num_workers=0",
            *overrides,
        ],
        config_name="predict",
    )
    return predict(cfg), out


def test_one_row_per_readable_image_and_the_unreadable_listed(trained, heldout, tmp_path):
    root, readable, broken = heldout
    summary, out = run_predict(trained, tmp_path, f"input={root}")
    rows = _rows(out / "predictions.csv")
    assert sorted(r["path"] for r in rows) == readable  # no data options: every image below the folder, once
    unreadable = {Path(r["path"]).name: r["reason"] for r in _rows(out / "reports" / "unreadable.csv")}
    assert set(unreadable) == set(broken)
    for name, reason in broken.items():
        assert reason in unreadable[name]
    assert summary["found"] == len(readable) + len(broken) == summary["predicted"] + summary["unreadable"]
    assert sum(summary["decisions"].values()) == len(rows)
    assert json.loads((out / "reports" / "summary.json").read_text())["predicted"] == len(rows)
    assert {r["decision"] for r in rows} <= set(DECISIONS)
    for r in rows:  # the run's index gives every image a distance and a flag
        assert 0 <= float(r["distance"]) <= 2 and r["unfamiliar"] in ("true", "false")
        probabilities = [float(r[f"probability_{k}"]) for k in (1, 2, 3)]
        assert probabilities == sorted(probabilities, reverse=True) and r["class_1"]
    # The tiny run's validation split has 6 images a class, below min_support: no class reaches the
    # target precision, so the run's thresholds.csv lets nothing through, and each row says why.
    assert summary["thresholds"].endswith("reports/thresholds.csv")
    assert summary["decisions"]["label"] == 0
    assert all("never emitted" in r["reason"] or "unfamiliar" in r["reason"] for r in rows)


def test_a_blocked_class_never_appears(trained, heldout, tmp_path):
    root, _, _ = heldout
    _, free = run_predict(trained, tmp_path, f"input={root}", "predict.thresholds=null", name="free")
    before = {r["path"]: r for r in _rows(free / "predictions.csv")}
    blocked = max(
        {r["class_1"] for r in before.values()}, key=lambda c: sum(r["class_1"] == c for r in before.values())
    )
    summary, out = run_predict(
        trained,
        tmp_path,
        f"input={root}",
        "predict.thresholds=null",
        f"predict.blocked_classes=[{blocked}]",
        "rank=label_next",
        name="blocked",
    )
    rows = _rows(out / "predictions.csv")
    for r in [*rows, *_rows(out / "label_next.csv")]:  # not as a label, a listed class, nor in a reason
        assert all(blocked not in value for key, value in r.items() if key != "path"), r
    assert blocked not in summary["labels"] and summary["blocked_classes"] == [blocked]
    withheld = {r["path"] for r in rows if r["decision"] == "withheld"}
    assert withheld == {p for p, r in before.items() if r["class_1"] == blocked} and withheld
    for r in rows:
        if r["decision"] == "withheld":  # no fallback: nothing listed at all
            assert r["label"] == r["class_1"] == r["confidence"] == ""
        else:  # everything else is decided as before
            assert (r["decision"], r["label"]) == (before[r["path"]]["decision"], before[r["path"]]["label"])
    assert summary["decisions"]["withheld"] == len(withheld)


def test_min_confidence_abstains_and_a_thresholds_file_is_applied(trained, heldout, tmp_path):
    root, _, _ = heldout
    # The cut between the two middle confidences, so that both decisions occur whatever the run's temperature.
    _, first = run_predict(trained, tmp_path, f"input={root}", "predict.thresholds=null", name="all")
    middle = sorted(float(r["confidence"]) for r in _rows(first / "predictions.csv"))
    cut = round((middle[len(middle) // 2 - 1] + middle[len(middle) // 2]) / 2, 6)
    _, out = run_predict(
        trained,
        tmp_path,
        f"input={root}",
        "predict.thresholds=null",
        "predict.familiarity=null",
        f"predict.min_confidence={cut}",
        "predict.top_k=2",
    )
    rows = _rows(out / "predictions.csv")
    assert "class_3" not in rows[0] and rows[0]["distance"] == rows[0]["unfamiliar"] == ""
    assert {r["decision"] for r in rows} == {"label", "abstain"}
    for r in rows:
        assert (float(r["confidence"]) >= cut) == (r["decision"] == "label")
    names = json.loads((trained[0] / "reports" / "classes.json").read_text())
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text(
        "class,threshold,reached\n" + "".join(f"{n},{0.0 if n == names[0] else 1.0},{n == names[0]}\n" for n in names)
    )
    _, out = run_predict(
        trained, tmp_path, f"input={root}", f"predict.thresholds={thresholds}", "predict.familiarity=null", name="t"
    )
    rows = _rows(out / "predictions.csv")
    assert {r["label"] for r in rows if r["decision"] == "label"} == {names[0]}
    assert all(r["decision"] == "abstain" for r in rows if r["class_1"] != names[0])


def test_label_next_ranks_every_predicted_image(trained, heldout, tmp_path):
    root, readable, _ = heldout
    _, out = run_predict(trained, tmp_path, f"input={root}", "rank=label_next", "predict.label_budget=10")
    ranked = _rows(out / "label_next.csv")
    assert [int(r["rank"]) for r in ranked] == list(range(1, len(readable) + 1))
    assert sorted(r["path"] for r in ranked) == readable
    assert all(float(r["distance"]) >= 0 for r in ranked[:10])  # compared with the training images
    assert "not diversified" in ranked[-1]["reason"] and "not diversified" not in ranked[9]["reason"]


def test_images_unlike_the_training_data_are_flagged_unfamiliar(trained, tmp_path):
    """Photographs against digits of the training classes (a very different source)."""
    from skimage import data

    run_dir, _, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"):
        image = getattr(data, name)()
        for i in range(8):
            y, x = rng.integers(0, image.shape[0] - 128), rng.integers(0, image.shape[1] - 128)
            Image.fromarray(image[y : y + 128, x : x + 128]).save(photos / f"{name}_{i}.png")
    test_split = json.loads((run_dir / "catalogue.json").read_text())["splits"]["test"]["path"]
    manifest = tmp_path / "test.csv"
    manifest.write_text("path\n" + "\n".join(test_split) + "\n")
    _, known = run_predict(trained, tmp_path, f"input={manifest}", name="known")
    _, unseen = run_predict(trained, tmp_path, f"input={photos}", name="unseen")
    known_rows, unseen_rows = _rows(known / "predictions.csv"), _rows(unseen / "predictions.csv")
    auroc = unfamiliar_auroc([float(r["distance"]) for r in known_rows], [float(r["distance"]) for r in unseen_rows])
    flagged = [np.mean([r["unfamiliar"] == "true" for r in rows]) for rows in (known_rows, unseen_rows)]
    assert auroc >= 0.9 and flagged[1] >= 0.5 and flagged[0] <= 0.2, (auroc, flagged)
    assert all(r["decision"] == "abstain" for r in unseen_rows if r["unfamiliar"] == "true")


def test_run_files_made_for_another_epoch_are_left_out_with_a_note(trained):
    run_dir, _, _ = trained
    names = json.loads((run_dir / "reports" / "classes.json").read_text())
    found = for_checkpoint(run_dir, 999, names, "auto", "auto")
    assert found.thresholds == {} and found.familiarity is None and len(found.notes) == 2
    assert "not this one (epoch 999)" in found.notes[0]
    epoch = json.loads((run_dir / "reports" / "thresholds.json").read_text())["epoch"]
    found = for_checkpoint(run_dir, epoch, names, "auto", "auto")
    assert found.familiarity is not None and set(found.thresholds) == set(names) and not found.notes
    assert all(math.isinf(t) for t in found.thresholds.values())  # min_support not reached (see above)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["predict.blocked_classes=[cat]"], r"predict.blocked_classes=\['cat'\] names classes the model does not have"),
        (["predict.min_confidence=1.5"], r"predict.min_confidence must be in \[0, 1\]"),
        (["rank=label_first"], "the only ranking is rank=label_next"),
        (["predict.label_budget=0"], "predict.label_budget=0 must be a positive number"),
        (["data.scan=quick"], r"data.scan='quick' must be one of"),
        (["model_file=/nowhere/model.onnx"], "give one model"),
        (["predict.thresholds=/nowhere/thresholds.csv"], "does not exist"),
        (["input=/nowhere"], "input='/nowhere' does not exist"),
        (["input=/nowhere/batch.csv"], "input='/nowhere/batch.csv' does not exist"),
    ],
)
def test_mistakes_are_named(trained, heldout, tmp_path, overrides, message):
    root, _, _ = heldout
    from datamodules import DataError

    with pytest.raises((ConfigError, DataError), match=message):
        run_predict(trained, tmp_path, f"input={root}", *overrides)
    assert not (tmp_path / "predict" / "predictions.csv").exists()


def test_one_blocked_class_may_be_given_without_brackets(trained, heldout, tmp_path):
    from inference.run_files import class_list

    assert class_list(3) == ["3"] and class_list("digit_3") == ["digit_3"] and class_list(None) == []
    root, _, _ = heldout
    summary, out = run_predict(trained, tmp_path, f"input={root}", "predict.blocked_classes=digit_3")
    assert summary["blocked_classes"] == ["digit_3"]
    assert all(r["label"] != "digit_3" for r in _rows(out / "predictions.csv"))


def test_an_index_that_does_not_fit_the_model_stops_before_any_image_is_read(trained, heldout, tmp_path):
    from inference.familiarity import FamiliarityIndex

    root, _, _ = heldout
    rng = np.random.default_rng(0)
    narrow = FamiliarityIndex(rng.random((20, 8), dtype=np.float32), k=3)
    narrow.calibrate(rng.random((5, 8), dtype=np.float32))
    narrow.save(tmp_path / "narrow")
    with pytest.raises(ConfigError, match="built on embeddings of 8 values; this model gives"):
        run_predict(trained, tmp_path, f"input={root}", f"predict.familiarity={tmp_path / 'narrow'}")
    FamiliarityIndex(rng.random((20, 8), dtype=np.float32), k=3).save(tmp_path / "uncalibrated")
    with pytest.raises(ConfigError, match="has no threshold"):
        run_predict(trained, tmp_path, f"input={root}", f"predict.familiarity={tmp_path / 'uncalibrated'}")
    assert not (tmp_path / "predict" / "predictions.csv").exists()
