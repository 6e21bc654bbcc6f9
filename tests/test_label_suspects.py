"""Training dynamics against their formulas, resume, DDP bookkeeping, K-fold confident learning."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.special import softmax

from callbacks.label_suspects import TrainingDynamics
from callbacks.sample_outputs import label_statistics
from crossval_label_issues import main as stitch
from tests.conftest import compose_config, tiny_overrides
from train import train


def test_statistics_equal_the_formulas_on_hand_built_logits():
    # 3 samples, 3 classes, 3 epochs; given labels 0, 1, 2.
    target = np.array([0, 1, 2])
    epochs = [
        np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 3.0]]),
        np.array([[0.5, 1.5, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 1.0]]),
        np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]),
    ]
    dynamics = TrainingDynamics(3)
    for logits in epochs:
        stats = label_statistics(torch.tensor(logits), torch.tensor(target))
        dynamics.update(np.arange(3), *(stats[k].numpy() for k in ("margin", "p_target", "other_class")))
    stats = dynamics.scores()
    rows = np.arange(3)
    margins = [lg[rows, target] - np.max(np.where(np.eye(3)[target] == 1, -np.inf, lg), axis=1) for lg in epochs]
    probs = [softmax(lg, axis=1)[rows, target] for lg in epochs]
    np.testing.assert_allclose(stats["aum"], np.mean(margins, axis=0))
    np.testing.assert_allclose(stats["confidence"], np.mean(probs, axis=0))
    np.testing.assert_allclose(stats["variability"], np.std(probs, axis=0))
    # Sample 0: right, wrong, right -> 1 forgetting event. Sample 1: wrong, right, wrong -> 1.
    # Sample 2: right, wrong, right -> 1.
    assert stats["forgetting"].tolist() == [1, 1, 1]
    assert dynamics.other_class.tolist() == [1, 2, 0]  # strongest other class, last epoch
    # Combined score: half for being wrong at the last epoch, half for 1 - confidence.
    wrong_last = np.array([m[-1] < 0 for m in np.array(margins).T])
    np.testing.assert_allclose(stats["score"], 0.5 * wrong_last + 0.5 * (1 - np.mean(probs, axis=0)))
    assert wrong_last.tolist() == [False, True, False]
    flagged = dynamics.flagged(max_margin=0.0, min_epochs=2)
    assert flagged.tolist() == [False, np.mean(margins, axis=0)[1] < 0, False]


def test_unseen_samples_have_no_score_and_state_round_trips():
    dynamics = TrainingDynamics(4)
    dynamics.update(np.array([0, 2]), np.array([1.0, 2.0]), np.array([0.7, 0.9]), np.array([0, 1]))
    stats = dynamics.scores()
    assert np.isnan(stats["aum"][[1, 3]]).all() and not np.isnan(stats["aum"][[0, 2]]).any()
    copy = TrainingDynamics(4)
    copy.load_state_dict(dynamics.state_dict())
    np.testing.assert_array_equal(copy.scores()["aum"], stats["aum"])
    with pytest.raises(ValueError, match="tracked 4 training samples"):
        TrainingDynamics(5).load_state_dict(dynamics.state_dict())


def _scores(path) -> dict[tuple[str, str], list[str]]:
    with open(path) as f:
        return {
            (r["split"], r["index"]): [
                r["aum"],
                r["confidence"],
                r["variability"],
                r["forgetting_events"],
                r["epochs_seen"],
            ]
            for r in csv.DictReader(f)
            if r["split"] == "train"
        }


@pytest.mark.slow
def test_resume_gives_the_same_scores_as_an_uninterrupted_run(digits_folder, tmp_path):
    common = [
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "augment=none",
        "callbacks=minimal",
        "+callbacks.sample_outputs._target_=callbacks.SampleOutputs",
        "+callbacks.label_suspects._target_=callbacks.LabelSuspects",
    ]
    whole = compose_config(tiny_overrides(digits_folder, tmp_path / "whole") + common)
    train(whole)
    stopped = compose_config(
        tiny_overrides(digits_folder, tmp_path / "part1")
        + common
        + ["+callbacks.stop._target_=tests.helpers.StopAfterEpoch", "+callbacks.stop.epoch=1"]
    )
    train(stopped)
    assert {r[4] for r in _scores(tmp_path / "part1" / "reports" / "label_scores.csv").values()} == {"2"}
    resumed = compose_config(
        tiny_overrides(digits_folder, tmp_path / "part2")
        + common
        + [f"ckpt_path={tmp_path / 'part1' / 'checkpoints' / 'last.ckpt'}"]
        # A flagging setting may change on resume; the statistics still continue.
        + ["+callbacks.label_suspects.max_margin=0.5"]
    )
    train(resumed)
    expected = _scores(tmp_path / "whole" / "reports" / "label_scores.csv")
    got = _scores(tmp_path / "part2" / "reports" / "label_scores.csv")
    assert len(expected) == 240 and set(got) == set(expected)
    for key, values in expected.items():
        assert got[key][4] == values[4] == "3"
        np.testing.assert_allclose(
            [float(v) for v in got[key][:4]], [float(v) for v in values[:4]], atol=1e-5, err_msg=str(key)
        )


def test_suspects_report_lists_flagged_samples_with_evidence(trained):
    run_dir = trained[0]
    with open(run_dir / "reports" / "label_suspects.csv") as f:
        suspects = list(csv.DictReader(f))
    with open(run_dir / "reports" / "label_scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == 210  # every training sample (10 classes x 21)
    assert all(r["flagged"] == "True" for r in suspects)
    train_suspects = [r for r in suspects if r["split"] == "train"]
    assert train_suspects  # a 3-epoch tiny model leaves training samples it still contradicts
    assert all(
        float(r["aum"]) < 0 and int(r["epochs_seen"]) >= 2 and r["wrong_last_epoch"] == "True" for r in train_suspects
    )
    assert all(r["suggested_label"] != r["given_label"] for r in train_suspects)
    flagged_in_scores = {(r["index"]) for r in scores if r["flagged"] == "True"}
    assert flagged_in_scores == {r["index"] for r in train_suspects}
    assert {r["method"] for r in suspects} <= {"training_dynamics", "confident_learning"}
    val_rows = [r for r in suspects if r["method"] == "confident_learning"]
    assert all(r["split"] == "val" and 0 <= float(r["cleanlab_quality"]) <= 1 for r in val_rows)
    assert len(val_rows) == sum(r["split"] == "val" for r in suspects)


@pytest.mark.slow
def test_kfold_jobs_and_the_stitch_command_cover_the_training_set_once(digits_folder, tmp_path):
    sweep = tmp_path / "sweep"
    for fold in range(3):
        cfg = compose_config(
            [
                *tiny_overrides(digits_folder, sweep / str(fold)),
                "data.num_folds=3",
                f"data.fold={fold}",
                "data.label_noise=0.1",
                "trainer.max_epochs=1",
                "callbacks=minimal",
                "+callbacks.sample_outputs._target_=callbacks.SampleOutputs",
                "+callbacks.heldout_predictions._target_=callbacks.HeldoutPredictions",
            ]
        )
        train(cfg)
        with open(sweep / str(fold) / "reports" / "heldout_probs.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 80 and {r["fold"] for r in rows} == {str(fold)}
        probs = np.array([[float(r[f"prob_digit_{c}"]) for c in range(10)] for r in rows])
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
        summary = json.loads((sweep / str(fold) / "reports" / "data_summary.json").read_text())
        assert summary["used"]["heldout"] == 80 and summary["used"]["train"] == 160
    assert stitch([str(sweep)]) == 0
    with open(sweep / "label_quality.csv") as f:
        quality = list(csv.DictReader(f))
    assert len(quality) == 240 and len({r["path"] for r in quality}) == 240
    with open(sweep / "label_issues.csv") as f:
        issues = list(csv.DictReader(f))
    assert issues and all(r["flagged"] == "True" for r in issues)  # 10% of the labels were flipped
    assert len(issues) == sum(r["flagged"] == "True" for r in quality)
    (sweep / "2" / "reports" / "heldout_probs.csv").unlink()
    assert stitch([str(sweep)]) == 2  # a missing fold is an error, not a partial result


def test_stitch_rejects_folds_that_overlap(tmp_path):
    for fold in range(2):
        reports = tmp_path / str(fold) / "reports"
        reports.mkdir(parents=True)
        (reports / "classes.json").write_text('["a", "b"]')
        (reports / "data_summary.json").write_text('{"used": {"train": 2, "heldout": 2}}')
        with open(reports / "heldout_probs.csv", "w") as f:
            f.write("path,index,fold,num_folds,given_label,label_id,prob_a,prob_b\n")
            f.write(f"/x/same.png,0,{fold},2,a,0,0.9,0.1\n/x/{fold}.png,1,{fold},2,b,1,0.2,0.8\n")
    assert stitch([str(tmp_path)]) == 2
