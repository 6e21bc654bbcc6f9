"""How well the single-run label suspects find injected label errors, against cleanlab on
K-fold out-of-sample probabilities of the same model and epochs.

    python -m benchmarks.label_noise [--folds 5] [--scenarios uniform_10 uniform_30 pair_20] [overrides ...]
    python -m benchmarks.label_noise --folds 0 data.split_seed=1   # the single runs only (a quick check)

For each scenario the built-in training labels are flipped on purpose (data.label_noise),
then (a) one run with the LabelSuspects callback scores every training sample, and (b) K
fold jobs predict their held-out folds and crossval_label_issues.py runs confident learning
over the stitched probabilities. Reported per method: AUROC of the score against the
injected flips, precision and recall of the flagged set, and wall time. Running only some
scenarios updates those in benchmarks/results/label_noise.json and keeps the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import RESULTS, machine, run
from crossval_label_issues import main as stitch

SCENARIOS = {
    "uniform_10": ["data.label_noise=0.1", "data.label_noise_type=uniform"],
    "uniform_30": ["data.label_noise=0.3", "data.label_noise_type=uniform"],
    "pair_20": ["data.label_noise=0.2", "data.label_noise_type=class_pair"],
}
SINGLE = [
    "callbacks=minimal",
    "+callbacks.sample_outputs._target_=callbacks.SampleOutputs",
    "+callbacks.label_suspects._target_=callbacks.LabelSuspects",
]
FOLD = [
    "callbacks=minimal",
    "+callbacks.sample_outputs._target_=callbacks.SampleOutputs",
    "+callbacks.heldout_predictions._target_=callbacks.HeldoutPredictions",
]
# Each column of label_scores.csv, signed so that higher = more suspect.
COMPONENTS = {"score": 1, "aum": -1, "confidence": -1, "variability": 1, "forgetting_events": 1, "wrong_last_epoch": 1}


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _number(value: str) -> float:
    """A CSV cell as a number; booleans as 0/1."""
    return {"True": 1.0, "False": 0.0}[value] if value in ("True", "False") else float(value)


def _detection(paths: list[str], scores: np.ndarray, flagged: np.ndarray, noisy: set[str]) -> dict:
    truth = np.array([p in noisy for p in paths])
    hits = int((flagged & truth).sum())
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "flagged": int(flagged.sum()),
        "precision": hits / max(1, int(flagged.sum())),
        "recall": hits / max(1, int(truth.sum())),
    }


def _work(job: dict) -> dict:
    """Sample passes a run made: training (forward and backward) every epoch; validation every
    epoch; test and the held-out fold once. ``compute`` weighs a backward pass as two forward
    passes (the usual estimate), so it is proportional to the floating-point work of one model."""
    used, epochs = job["samples_used"], len(job["epoch_seconds"])
    train = used["train"] * epochs
    evaluate = used.get("val", 0) * epochs + used.get("test", 0) + used.get("heldout", 0)
    return {"train_passes": train, "eval_passes": evaluate, "compute": 3 * train + evaluate}


def scenario(name: str, folds: int, extra: list[str], tmp: Path) -> dict:
    overrides = [*SCENARIOS[name], *extra]
    single_dir = tmp / name / "single"
    single = run(single_dir, [*SINGLE, *overrides])
    noisy = {r["path"] for r in _read(single_dir / "reports" / "injected_noise.csv")}
    rows = _read(single_dir / "reports" / "label_scores.csv")
    paths = [r["path"] for r in rows]
    flagged = np.array([r["flagged"] == "True" for r in rows])
    result = {"injected": len(noisy), "train_samples": len(rows)}
    result["single_run"] = _detection(paths, np.array([float(r["score"]) for r in rows]), flagged, noisy)
    result["single_run"]["seconds"] = single["total_seconds"]
    result["single_run"]["work"] = _work(single)
    result["single_run"]["component_auroc"] = {
        key: float(roc_auc_score([p in noisy for p in paths], sign * np.array([_number(r[key]) for r in rows])))
        for key, sign in COMPONENTS.items()
    }
    if not folds:
        return result
    seconds, work = 0.0, Counter()
    for fold in range(folds):
        job = run(tmp / name / "kfold" / str(fold), [*FOLD, *overrides, f"data.num_folds={folds}", f"data.fold={fold}"])
        seconds += job["total_seconds"]
        work.update(_work(job))
    assert stitch([str(tmp / name / "kfold")]) == 0
    quality = _read(tmp / name / "kfold" / "label_quality.csv")
    result["kfold_cleanlab"] = _detection(
        [r["path"] for r in quality],
        np.array([float(r["score"]) for r in quality]),
        np.array([r["flagged"] == "True" for r in quality]),
        noisy,
    )
    result["kfold_cleanlab"]["seconds"] = seconds
    result["kfold_cleanlab"]["work"] = dict(work)
    result["auroc_gap"] = result["single_run"]["auroc"] - result["kfold_cleanlab"]["auroc"]
    # Work is counted exactly; wall time on a shared machine varies by 10-20% between runs.
    result["compute_ratio"] = result["single_run"]["work"]["compute"] / work["compute"]
    result["wall_time_ratio"] = result["single_run"]["seconds"] / seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    command = "python -m benchmarks.label_noise " + " ".join(
        [f"--folds {args.folds}", "--scenarios", *args.scenarios, *args.overrides]
    )
    # The single runs alone (--folds 0) are a check against the recorded one-run figures; they are
    # kept apart so that the K-fold comparison on record is not replaced by a partial result.
    out = RESULTS / ("label_noise.json" if args.folds else "label_noise_single.json")
    # Scenarios not run now keep their earlier results; each scenario records when and how it ran.
    results = json.loads(out.read_text()) if out.exists() else {"scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="lookout-noise-") as tmp:
        for name in args.scenarios:
            result = scenario(name, args.folds, args.overrides, Path(tmp))
            results["scenarios"][name] = {"machine": machine(), "command": command, **result}
            print(name, json.dumps(results["scenarios"][name], indent=1), flush=True)
    results["scenarios"] = {name: results["scenarios"][name] for name in SCENARIOS if name in results["scenarios"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
