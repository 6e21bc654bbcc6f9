"""The data audit against CleanVision (cleanlab's image auditor) on the same folder of planted problems.

    python -m benchmarks.audit_vs_cleanvision [--copies 6] [--speed-images 2000] [--no-embeddings]

The folder is ``tests/audit_planted.py``'s set: distinct crops of real photos plus planted
exact copies, near copies (JPEG q60, +-20% size, +-15% brightness, 2-px crops), mirror images,
conflicting copies and quality problems. Both tools run on it with their defaults; reported
per issue type: recall of what was planted, images flagged among the clean crops, and the
agreement of the two flagged sets (Jaccard). ``full`` adds the embedding search on the
pooled features of the packaged pretrained EfficientNet-Lite0 (in training these come from the
forward pass the run makes anyway, so their cost is reported apart). Wall time is measured on
the planted folder and on ``--speed-images`` generated images (``benchmarks/audit_scale.py``'s
generator), each tool in a fresh process with all cores; the import time is reported apart
(importing ``datamodules`` loads torch and Lightning today). Writes
``benchmarks/results/audit_vs_cleanvision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, machine

# Our flag -> CleanVision's issue type, per comparable issue.
ISSUES = {
    "dark": "dark",
    "bright": "light",
    "blurry": "blurry",
    "low_information": "low_information",
    "tiny": "odd_size",
    "odd_aspect_ratio": "odd_aspect_ratio",
    "grayscale": "grayscale",
}
PLANTED_KIND = {"low_information": "blank"}  # our flag -> planted kind, where they differ


def _time_in_fresh_process(tool: str, paths_file: Path) -> dict[str, float]:
    """One tool on the listed files in a new interpreter: seconds to import it, and to audit."""
    code = (
        "import sys, time, json\n"
        "paths = open(sys.argv[1]).read().split('\\n')\n"
        "start = time.perf_counter()\n"
        "if sys.argv[2] == 'cleanvision':\n"
        "    from cleanvision import Imagelab\n"
        "else:\n"
        "    from datamodules.sources import Sample\n"
        "    from data_audit import run_audit\n"
        "imported = time.perf_counter()\n"
        "if sys.argv[2] == 'cleanvision':\n"
        "    Imagelab(filepaths=paths, verbose=False).find_issues(verbose=False)\n"
        "else:\n"
        "    run_audit([Sample(p, 'x', 'train') for p in paths])\n"
        "print(json.dumps({'import': imported - start, 'audit': time.perf_counter() - imported}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(paths_file), tool], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pairs_of_sets(sets) -> set[frozenset[str]]:
    return {frozenset(p) for s in sets for p in combinations(sorted(s), 2)}


def _backbone_embeddings(paths: list[str]) -> np.ndarray:
    """Pooled features of the packaged ImageNet EfficientNet-Lite0 (the default backbone), offline: the
    loop ``audit.mode=full`` runs (``runs.audit_loops.backbone_embeddings``), at the backbone's 224 px."""
    from runs.audit_loops import backbone_embeddings

    model = {"name": "tf_efficientnet_lite0", "pretrained": True}
    return backbone_embeddings(paths, model=model, options={"batch_size": 16, "num_workers": 0}, progress=False)


def _recall(found: set, truth: set) -> float | None:
    return len(found & truth) / len(truth) if truth else None


def _jaccard(a: set, b: set) -> float | None:
    return len(a & b) / len(a | b) if a | b else None


def compare(copies: int, use_embeddings: bool) -> dict:
    from cleanvision import Imagelab

    from data_audit import duplicate_groups, run_audit
    from tests.audit_planted import NEAR_KINDS, build

    folder = Path(tempfile.mkdtemp(prefix="audit-vs-cv-"))
    planted = build(folder / "data", copies_per_kind=copies)
    paths = [s.path for s in planted.samples]

    start = time.perf_counter()
    lab = Imagelab(filepaths=paths, verbose=False)
    lab.find_issues(verbose=False)
    cv_seconds = time.perf_counter() - start
    cv_issues = lab.issues

    start = time.perf_counter()
    ours = run_audit(planted.samples)
    our_seconds = time.perf_counter() - start
    full, embed_seconds, full_seconds = None, None, None
    if use_embeddings:
        start = time.perf_counter()
        embeddings = _backbone_embeddings(paths)
        embed_seconds = time.perf_counter() - start
        start = time.perf_counter()
        full = run_audit(planted.samples, mode="full", embeddings=embeddings)
        full_seconds = time.perf_counter() - start

    all_true = planted.true_pairs()
    truth = {
        "exact_duplicates": planted.true_pairs(include={"exact"}) - planted.true_pairs(include=set()),
        "near_duplicates": planted.true_pairs(include=set(NEAR_KINDS)) - planted.true_pairs(include=set()),
        "mirror_images": planted.true_pairs(include={"flip"}) - planted.true_pairs(include=set()),
    }
    cv_exact = _pairs_of_sets(lab.info["exact_duplicates"]["sets"])
    cv_near = _pairs_of_sets(lab.info["near_duplicates"]["sets"]) | cv_exact

    def our_pairs(findings):
        return {frozenset(p) for g in duplicate_groups(findings) for p in combinations(g.paths, 2)}

    results: dict = {"duplicates": {}, "quality": {}}
    tools = {"cleanvision": cv_near, "lookout_cheap": our_pairs(ours)}
    if full is not None:
        tools["lookout_full"] = our_pairs(full)
    for kind, true_pairs in truth.items():
        entry = {"planted_pairs": len(true_pairs)}
        for tool, found in tools.items():
            # CleanVision's exact sets are its answer for exact copies; its near sets include them.
            entry[f"{tool}_recall"] = _recall(
                cv_exact if (tool, kind) == ("cleanvision", "exact_duplicates") else found, true_pairs
            )
        results["duplicates"][kind] = entry
    results["duplicates"]["pair_precision"] = {
        tool: (len(found & all_true) / len(found) if found else None) for tool, found in tools.items()
    }
    if full is not None:
        results["duplicates"]["found_only_by_embeddings"] = sorted(
            "|".join(sorted(Path(p).name for p in pair)) for pair in tools["lookout_full"] - tools["lookout_cheap"]
        )

    quality = ours.quality.set_index("path")
    clean = set(planted.clean)
    for flag, cv_name in ISSUES.items():
        planted_paths = set(planted.quality.get(PLANTED_KIND.get(flag, flag), []))
        cv_flagged = set(cv_issues.index[cv_issues[f"is_{cv_name}_issue"]])
        our_flagged = set(quality.index[quality[flag]])
        results["quality"][flag] = {
            "cleanvision_issue": cv_name,
            "planted": len(planted_paths),
            "cleanvision_recall": _recall(cv_flagged, planted_paths),
            "lookout_recall": _recall(our_flagged, planted_paths),
            "cleanvision_clean_flagged": len(cv_flagged & clean),
            "lookout_clean_flagged": len(our_flagged & clean),
            "agreement_jaccard": _jaccard(cv_flagged, our_flagged),
        }
    return {
        "images": len(paths),
        "clean_images": len(clean),
        "seconds_in_process": {
            "cleanvision": cv_seconds,
            "lookout_cheap": our_seconds,
            "lookout_full_search": full_seconds,
            "backbone_embeddings": embed_seconds,
        },
        "settings": {
            "phash_bits": ours.settings["phash_bits"],
            "embedding_min_cosine": full and full.settings["embedding_min_cosine"],
        },
        **results,
        "_paths": paths,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=6, help="copies per planted kind (<= 8)")
    parser.add_argument("--speed-images", type=int, default=2000, help="generated images for the speed run (0: skip)")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the full mode (no backbone forward pass)")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]  # this machine is shared: say how busy it was
    result = compare(args.copies, not args.no_embeddings)
    paths = result.pop("_paths")
    timing = {}
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(paths))
        timing["planted"] = {tool: _time_in_fresh_process(tool, listing) for tool in ("cleanvision", "lookout")}
        if args.speed_images:
            from benchmarks.audit_scale import generate

            generated = generate(args.speed_images)
            listing.write_text("\n".join(generated))
            timing[f"generated_{args.speed_images}"] = {
                tool: _time_in_fresh_process(tool, listing) for tool in ("cleanvision", "lookout")
            }
    for entry in timing.values():
        entry["speedup_audit"] = entry["cleanvision"]["audit"] / entry["lookout"]["audit"]
        entry["speedup_with_imports"] = sum(entry["cleanvision"].values()) / sum(entry["lookout"].values())
    result["seconds_fresh_process"] = timing
    out = {"machine": machine(), "load_average_1m": [load_before, os.getloadavg()[0]], **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit_vs_cleanvision.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
