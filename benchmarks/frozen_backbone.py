"""What a frozen backbone saves: frozen (head-only) against unfrozen epochs of the same run.

    python -m benchmarks.frozen_backbone [--frozen 3] [--unfrozen 3] [extra overrides ...]

One run of the default `make train` configuration (or of the overrides given) with
`model.freeze_backbone_epochs=FROZEN` and FROZEN + UNFROZEN epochs, so both kinds of epoch run in
the same process, on the same data, minutes apart. Per epoch it records the training phase
(from the epoch's start to its validation: forward, backward, optimiser steps, data loading) and
the whole epoch (start to the next epoch's start: validation and every review panel included).
The first epoch (start-up) is left out of both, the last from the whole-epoch figure (it is
followed by the one-off end-of-fit reports). Writes `benchmarks/results/frozen_backbone.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback
from omegaconf import open_dict

from benchmarks.common import RESULTS, compose_config, machine


class PhaseTimer(Callback):
    """Per training epoch: its training phase (start to validation) and the whole epoch (start to the
    next epoch's start, or to the end of fitting), in seconds, and its steps; written to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.starts: list[float] = []
        self.validation_starts: dict[int, float] = {}
        self.steps: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())
        self.steps.append(0)

    def on_train_batch_end(self, trainer, *args) -> None:
        self.steps[-1] += 1

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validation_starts.setdefault(trainer.current_epoch, time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        ends = [*self.starts[1:], time.perf_counter()]
        epochs = [
            {"train_seconds": self.validation_starts.get(i, end) - start, "epoch_seconds": end - start, "steps": n}
            for i, (start, end, n) in enumerate(zip(self.starts, ends, self.steps, strict=True))
        ]
        self.path.write_text(json.dumps(epochs))


def measure(frozen: int, unfrozen: int, overrides: list[str], run_dir: Path) -> dict:
    """Trains once in this process; returns the per-epoch times and the frozen/unfrozen medians."""
    from train import train

    times = run_dir.parent / "epochs.json"
    cfg = compose_config(
        [
            f"model.freeze_backbone_epochs={frozen}",
            f"trainer.max_epochs={frozen + unfrozen}",
            "test=false",
            *overrides,
            f"paths.output_dir={run_dir}",
        ]
    )
    with open_dict(cfg):
        timer = {"_target_": "benchmarks.frozen_backbone.PhaseTimer", "path": str(times)}
        cfg.callbacks = {**dict(cfg.callbacks or {}), "phase_timer": timer}
    train(cfg)
    epochs = json.loads(times.read_text())
    kinds = ["frozen" if i < frozen else "unfrozen" for i in range(len(epochs))]

    def median(key: str, kind: str) -> float:
        # Not timed: the first epoch (start-up); for whole epochs also the last (end-of-fit reports).
        stop = len(epochs) - 1 if key == "epoch_seconds" else len(epochs)
        return statistics.median(epochs[i][key] for i in range(1, stop) if kinds[i] == kind)

    medians = {
        key: {kind: median(key, kind) for kind in ("frozen", "unfrozen")} for key in ("train_seconds", "epoch_seconds")
    }
    return {
        "epochs": [{"kind": kind, **e} for kind, e in zip(kinds, epochs, strict=True)],
        "median_seconds": medians,
        # How many times faster a frozen epoch is: unfrozen time / frozen time.
        "speedup_train_phase": medians["train_seconds"]["unfrozen"] / medians["train_seconds"]["frozen"],
        "speedup_whole_epoch": medians["epoch_seconds"]["unfrozen"] / medians["epoch_seconds"]["frozen"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frozen", type=int, default=3, help="head-only epochs (the first is not timed)")
    parser.add_argument(
        "--unfrozen", type=int, default=3, help="epochs after (the last is left out of whole-epoch times)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "frozen_backbone.json", help="where the results go")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    if args.frozen < 2 or args.unfrozen < 2:
        parser.error("--frozen and --unfrozen must be at least 2: the first and the last epoch are not timed")
    from runs import environment

    environment.setup()
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        result = measure(args.frozen, args.unfrozen, args.overrides, Path(tmp) / "run")
    summary = {
        "machine": machine(),
        "command": "python -m benchmarks.frozen_backbone "
        + " ".join([f"--frozen {args.frozen}", f"--unfrozen {args.unfrozen}", *args.overrides]),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
