"""One benchmark training run in a fresh process: `python -m benchmarks.run_one RUN_DIR [overrides...]`.

Composes the training config exactly as `train.py` would, adds an epoch timer, trains, and
writes RUN_DIR/benchmark.json: per-epoch wall times, total wall time, peak memory, metrics.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import ClassVar

from lightning.pytorch import Callback
from omegaconf import open_dict

from benchmarks.common import compose_config
from runs import environment
from train import train


class EpochTimer(Callback):
    """Wall time of each training epoch, from its start to the next one's (validation, review
    panels and every epoch-end hook included); written to ``path`` when fitting ends."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        ends = [*self.starts[1:], time.perf_counter()]
        self.path.write_text(json.dumps([b - a for a, b in zip(self.starts, ends, strict=True)]))


class HookSpan(Callback):
    """Marks when a hook starts running through the callbacks (``edge="first"``, placed first)
    and when it is done (``edge="last"``, placed last); the spans between the two markers are
    the time the callbacks in between take, measured inside one run. Written to ``path``.

    Lightning moves checkpoint callbacks after every other one, so checkpointing (done in
    both settings of the overhead benchmark) is outside the span.
    """

    HOOKS = ("on_train_batch_end", "on_validation_batch_end", "on_validation_epoch_end", "on_train_epoch_end")
    marks: ClassVar[dict[str, list[float]]] = {}

    def __init__(self, edge: str, path: str | None = None) -> None:
        self.edge, self.path = edge, Path(path) if path else None

    def _mark(self, trainer, hook: str) -> None:
        if not trainer.sanity_checking:
            HookSpan.marks.setdefault(f"{hook}:{self.edge}", []).append(time.perf_counter())

    def on_train_batch_end(self, trainer, *args) -> None:
        self._mark(trainer, "on_train_batch_end")

    def on_validation_batch_end(self, trainer, *args) -> None:
        self._mark(trainer, "on_validation_batch_end")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._mark(trainer, "on_validation_epoch_end")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._mark(trainer, "on_train_epoch_end")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.edge == "last" and self.path is not None:
            spans = {
                hook: sum(b - a for a, b in zip(self.marks[f"{hook}:first"], self.marks[f"{hook}:last"], strict=True))
                for hook in self.HOOKS
                if f"{hook}:first" in self.marks
            }
            self.path.write_text(json.dumps(spans))


def main() -> None:
    environment.setup()
    run_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = compose_config([*overrides, f"paths.output_dir={run_dir}"])
    with open_dict(cfg):
        callbacks = dict(cfg.callbacks or {})
        cfg.callbacks = {
            "span_first": {"_target_": "benchmarks.run_one.HookSpan", "edge": "first"},
            **callbacks,
            "span_last": {
                "_target_": "benchmarks.run_one.HookSpan",
                "edge": "last",
                "path": str(run_dir / "callback_seconds.json"),
            },
            "epoch_timer": {"_target_": "benchmarks.run_one.EpochTimer", "path": str(run_dir / "epoch_seconds.json")},
        }
    start = time.perf_counter()
    metrics = train(cfg)
    total = time.perf_counter() - start
    result = {
        "overrides": overrides,
        "epoch_seconds": json.loads((run_dir / "epoch_seconds.json").read_text()),
        # Time spent inside the callbacks' per-batch and epoch-end hooks, whole fit.
        "callback_hook_seconds": json.loads((run_dir / "callback_seconds.json").read_text()),
        "total_seconds": total,
        # Samples per split (train, val, test, heldout), for counting the work done.
        "samples_used": json.loads((run_dir / "reports" / "data_summary.json").read_text())["used"],
        # Peak resident memory of this process, and of the largest DataLoader worker.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "metrics": metrics,
    }
    (run_dir / "benchmark.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
