"""Does one run buy robustness over another? Compares two runs' robustness grids type by type.

    python -m benchmarks.robustness_compare RUN_OR_CSV_A RUN_OR_CSV_B [--names basic drone] [--json FILE]

Each argument is a run folder (its ``reports/robustness.csv`` is read) or such a CSV itself;
both must be scored on the same data with the same robustness config. ``A`` is the
reference: B's CE per type and its mCE are taken with A as the baseline (below 1: B makes
fewer errors under corruption), the relative mCE compares what the corruptions cost each
run beyond its clean error. The markdown it prints is the table for BENCHMARKS.md.

The question it answers: ``augment=drone`` against ``augment=basic`` on the same data and
model (train both, run ``eval.py ... robustness=default`` on each, then compare).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from evaluation.robustness import CLEAN, corruption_errors, read_robustness_table, robustness_summary


def load(path: str) -> pd.DataFrame:
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "reports" / "robustness.csv"
    if not candidate.is_file():
        raise SystemExit(f"no robustness table at {candidate}: pass a run folder or its reports/robustness.csv")
    return read_robustness_table(candidate)


def compare(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> tuple[str, dict]:
    """The markdown comparison and its figures (JSON-ready)."""
    name_a, name_b = names
    own_a = corruption_errors(a).set_index("corruption")
    against_a = corruption_errors(b, a).set_index("corruption")
    common = [kind for kind in own_a.index if kind in against_a.index]
    if not common:
        raise SystemExit("the two tables share no corruption type: were they scored with the same config?")
    rows = []
    for kind in common:
        acc_a, acc_b = own_a.loc[kind, "mean_accuracy"], against_a.loc[kind, "mean_accuracy"]
        rows.append(
            {
                "corruption": kind,
                "family": own_a.loc[kind, "family"],
                f"accuracy_{name_a}": acc_a,
                f"accuracy_{name_b}": acc_b,
                "difference_pp": 100 * (acc_b - acc_a),
                "ce": against_a.loc[kind, "ce"],
                "relative_ce": against_a.loc[kind, "relative_ce"],
            }
        )
    table = pd.DataFrame(rows)
    summary_a, summary_b = robustness_summary(a), robustness_summary(b, a)
    better = int((table["difference_pp"] > 0).sum())

    def pct(value) -> str:
        return "n/a" if value is None or pd.isna(value) else f"{100 * value:.1f}%"

    def num(value) -> str:
        return "n/a" if value is None or pd.isna(value) else f"{value:.3f}"

    lines = [
        f"| corruption | family | {name_a} accuracy | {name_b} accuracy | difference (pp) | CE | relative CE |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.corruption.replace('_', ' ')} | {row.family} | {pct(row[2])} | {pct(row[3])} "
            f"| {row.difference_pp:+.1f} | {num(row.ce)} | {num(row.relative_ce)} |"
        )
    clean = {n: s["clean_accuracy"] for n, s in ((name_a, summary_a), (name_b, summary_b))}
    lines += [
        "",
        f"Clean accuracy: {name_a} {pct(clean[name_a])}, {name_b} {pct(clean[name_b])}. "
        f"Mean corrupted accuracy: {name_a} {pct(summary_a['mean_corrupted_accuracy'])}, "
        f"{name_b} {pct(summary_b['mean_corrupted_accuracy'])}.",
        f"{name_b} against {name_a}: mCE {num(summary_b['mce'])}, relative mCE {num(summary_b['relative_mce'])} "
        f"(below 1: more robust); more accurate on {better} of {len(table)} corruption types.",
    ]
    families = table.groupby("family", sort=False)["difference_pp"].mean()
    lines.append("Mean difference per family (pp): " + ", ".join(f"{f} {d:+.1f}" for f, d in families.items()) + ".")
    if CLEAN not in set(a["corruption"]) or CLEAN not in set(b["corruption"]):
        lines.append("One table has no clean row: relative CE is undefined.")
    figures = {
        "names": list(names),
        "per_type": table.to_dict(orient="records"),
        "summary": {name_a: summary_a, name_b: summary_b},
        "types_better": better,
    }
    return "\n".join(lines), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the reference run (folder or robustness.csv), e.g. augment=basic")
    parser.add_argument("b", help="the run compared with it, e.g. augment=drone")
    parser.add_argument("--names", nargs=2, default=("A", "B"), metavar=("NAME_A", "NAME_B"))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    markdown, figures = compare(load(args.a), load(args.b), tuple(args.names))
    print(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=float))


if __name__ == "__main__":
    main()
