"""Cost of the review callbacks: epoch time and peak memory of the default run with
`callbacks=default` versus `callbacks=none`, in alternating fresh processes.

    python -m benchmarks.callback_overhead [--pairs 3] [--epochs 4] [extra overrides ...]

An epoch is timed from its start to the next epoch's start, so it counts everything that
recurs every epoch: training steps, validation, every review panel, epoch-end hooks and
checkpoints. The first epoch (start-up) and the last (followed by the one-off end-of-fit
reports) are not timed. The ratio of medians is reported; the machine is noisy, so runs
alternate between the two settings. Inside each default run, the time spent in the
callbacks' hooks is also measured directly, as a share of the epoch time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, machine, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="alternating (default, none) pairs")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first and last are not timed)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both settings")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3: the first and the last epoch are not timed")
    settings = {"default": ["callbacks=default"], "none": ["callbacks=none"]}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        for pair in range(args.pairs):
            order = list(settings) if pair % 2 == 0 else list(settings)[::-1]
            for name in order:
                overrides = [*settings[name], f"trainer.max_epochs={args.epochs}", *args.overrides]
                result = run(Path(tmp) / f"{name}_{pair}", overrides)
                runs[name].append(result)
                print(
                    f"pair {pair} {name:8s} epochs {[round(s, 1) for s in result['epoch_seconds']]} "
                    f"peak {result['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )

    def epoch_median(name: str) -> float:
        return statistics.median(s for r in runs[name] for s in r["epoch_seconds"][1:-1])

    def peak_median(name: str) -> float:
        return statistics.median(r["peak_rss_mib"] for r in runs[name])

    summary = {
        "machine": machine(),
        "command": "python -m benchmarks.callback_overhead "
        + " ".join([f"--pairs {args.pairs}", f"--epochs {args.epochs}", *args.overrides]),
        "epoch_seconds_median": {name: epoch_median(name) for name in runs},
        "epoch_time_ratio": epoch_median("default") / epoch_median("none"),
        # Inside each default run: time in the callbacks' per-batch and epoch-end hooks over the
        # whole fit, as a share of the fit's epoch time (free of run-to-run noise).
        "callback_share_of_epoch_time": statistics.median(
            sum(r["callback_hook_seconds"].values()) / sum(r["epoch_seconds"]) for r in runs["default"]
        ),
        "callback_hook_seconds_median": {
            hook: statistics.median(r["callback_hook_seconds"].get(hook, 0.0) for r in runs["default"])
            for hook in runs["default"][0]["callback_hook_seconds"]
        },
        "epoch_seconds_all": {name: [r["epoch_seconds"] for r in runs[name]] for name in runs},
        "peak_rss_mib_median": {name: peak_median(name) for name in runs},
        "peak_memory_ratio": peak_median("default") / peak_median("none"),
        "total_seconds_median": {name: statistics.median(r["total_seconds"] for r in runs[name]) for name in runs},
        "val_acc_best": {name: [r["metrics"].get("val/acc_best") for r in runs[name]] for name in runs},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "callback_overhead.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
