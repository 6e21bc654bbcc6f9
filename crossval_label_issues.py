"""Confident learning over the whole training set from the K jobs of a K-fold sweep.

    python train.py -m data.num_folds=5 data.fold=0,1,2,3,4
    python crossval_label_issues.py logs/train/multiruns/<timestamp>

Each K-fold job predicted its held-out fold (``reports/heldout_probs.csv``); together the
folds give an out-of-sample probability for every training sample. This stitches them,
checks that every training sample appears exactly once, runs cleanlab's
``find_label_issues`` and ``get_label_quality_scores``, and writes, in the sweep folder:

* ``label_issues.csv``: the flagged samples, most suspect first (usable as ``data.exclude``
  or ``data.relabel`` of the next run);
* ``label_quality.csv``: every training sample with its score.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HEADER = ["path", "given_label", "suggested_label", "score", "flagged", "cleanlab_quality", "fold"]


class StitchError(ValueError):
    """The sweep's held-out predictions do not cover the training set exactly once."""


def load_folds(sweep_dir: Path) -> tuple[pd.DataFrame, list[str], pd.DataFrame | None]:
    """All held-out probabilities of the sweep, the class names, and the injected noise (if any)."""
    files = sorted(sweep_dir.glob("**/reports/heldout_probs.csv"))
    if not files:
        raise StitchError(
            f"no */reports/heldout_probs.csv under {sweep_dir}. Run the folds first: "
            "python train.py -m data.num_folds=5 data.fold=0,1,2,3,4"
        )
    tables, classes, train_sizes, noise = [], None, set(), None
    for file in files:
        reports = file.parent
        names = json.loads((reports / "classes.json").read_text())
        if classes is not None and names != classes:
            raise StitchError(
                f"{reports} has classes {names}, other folds have {classes}: the jobs used different data."
            )
        classes = names
        summary = json.loads((reports / "data_summary.json").read_text())
        train_sizes.add(summary["used"].get("train", 0) + summary["used"].get("heldout", 0))
        tables.append(pd.read_csv(file, keep_default_na=False))
        if noise is None and (reports / "injected_noise.csv").exists():
            noise = pd.read_csv(reports / "injected_noise.csv", keep_default_na=False)
    folds = pd.concat(tables, ignore_index=True)
    num_folds = set(folds["num_folds"])
    if len(num_folds) != 1:
        raise StitchError(f"jobs disagree on data.num_folds: {sorted(num_folds)}")
    k = num_folds.pop()
    present = sorted(set(folds["fold"]))
    if present != list(range(k)):
        raise StitchError(f"data.num_folds={k} but the sweep has folds {present}: run the missing ones.")
    per_fold = folds.groupby("fold")["path"].count()
    if len(files) != k:
        raise StitchError(f"{len(files)} held-out files for {k} folds: a fold was run twice; keep one of each.")
    twice = folds["path"][folds["path"].duplicated()]
    if len(twice):
        raise StitchError(f"{len(twice)} samples are held out by more than one fold, e.g. {twice.iloc[0]}.")
    if len(train_sizes) != 1 or train_sizes.pop() != len(folds):
        raise StitchError(
            f"the folds hold out {len(folds)} samples ({per_fold.to_dict()}), not the whole training split: "
            "the jobs used different data."
        )
    return folds, classes, noise


def find_issues(folds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    from callbacks.label_scores import confident_learning

    probs = folds[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    probs /= probs.sum(axis=1, keepdims=True)  # the CSV rounds to 6 digits
    labels = folds["label_id"].to_numpy()
    issues, quality = confident_learning(labels, probs)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1
    table = pd.DataFrame(
        {
            "path": folds["path"],
            "given_label": folds["given_label"],
            "suggested_label": [classes[i] for i in others.argmax(axis=1)],
            "score": 1 - quality,
            "flagged": issues,
            "cleanlab_quality": quality,
            "fold": folds["fold"],
        }
    )
    return table.sort_values(["flagged", "score"], ascending=[False, False], kind="stable")[HEADER]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder of the K-fold sweep")
    args = parser.parse_args(argv)
    try:
        folds, classes, noise = load_folds(args.sweep_dir)
    except StitchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = find_issues(folds, classes)
    table.to_csv(args.sweep_dir / "label_quality.csv", index=False)
    flagged = table[table["flagged"]]
    flagged.to_csv(args.sweep_dir / "label_issues.csv", index=False)
    print(f"{len(folds)} training samples from {folds['fold'].nunique()} folds; {len(flagged)} flagged.")
    print(f"  {args.sweep_dir / 'label_issues.csv'}\n  {args.sweep_dir / 'label_quality.csv'}")
    if noise is not None:
        flipped = set(noise["path"])
        hits = flagged["path"].isin(flipped).sum()
        print(
            f"injected label noise: {len(flipped)} flips; flagged {hits} of them "
            f"(precision {hits / max(1, len(flagged)):.2f}, recall {hits / max(1, len(flipped)):.2f})."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
