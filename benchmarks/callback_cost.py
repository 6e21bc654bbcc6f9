"""What each callback costs inside one run: the time spent in its hooks, as a share of the epoch time.

    python -m benchmarks.callback_cost [--epochs 4] [--threads 1] [overrides ...]

Trains once, in a fresh process, with the default config (``make train``) and a timer wrapped
around every hook of every callback, so each panel's cost is measured inside the same run, free
of the run-to-run noise a with/without comparison has on a shared machine (the way
``benchmarks/callback_overhead.py`` measures all panels together). Per callback it reports:

- ``per_epoch_share``: time in the hooks that recur every epoch (batch ends, epoch ends), over
  the epochs' wall time (from the first epoch's start to the end of fitting);
- ``once_seconds``: the one-off hooks of fitting (``setup``, ``on_fit_start``, ``on_fit_end``)
  and of testing, apart.

``--threads 1`` runs torch on one thread (``OMP_NUM_THREADS``): on a machine shared with other
jobs, two OpenMP threads on two busy cores spend most of their time waiting for each other (a
forward pass 20 times slower, measured), which would drown what is measured.

Results: ``benchmarks/results/callback_cost.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lightning.pytorch import Callback

from benchmarks.common import RESULTS, ROOT, machine

RECURRING = (
    "on_train_batch_end",
    "on_validation_batch_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_end",
    "on_validation_start",
)
ONCE = ("setup", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end")
TEST = ("on_test_batch_end", "on_test_epoch_end", "on_test_end", "on_test_start", "on_test_epoch_start")


class HookTimer(Callback):
    """Placed first: at ``setup`` it wraps every hook of every other callback with a timer; writes the
    totals to ``path`` at each ``teardown`` (the last one, after testing, holds everything)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.fit_span = [0.0, 0.0]
        self._wrapped: set[int] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        for callback in trainer.callbacks:
            if callback is self or id(callback) in self._wrapped:
                continue
            self._wrapped.add(id(callback))
            name = type(callback).__name__
            for hook in (*RECURRING, *ONCE, *TEST):
                method = getattr(callback, hook, None)
                if method is not None and getattr(type(callback), hook) is not getattr(Callback, hook):
                    setattr(callback, hook, self._timed(name, hook, method, trainer))

    def _timed(self, name: str, hook: str, method, trainer):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if not trainer.sanity_checking:
                    self.seconds[name][hook] += time.perf_counter() - start

        return timed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self.fit_span[0]:
            self.fit_span[0] = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_span[1] = time.perf_counter()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        epochs = self.fit_span[1] - self.fit_span[0]
        record = {
            "epoch_seconds_total": epochs,
            "epochs": trainer.current_epoch,
            "callbacks": {
                name: {
                    "per_epoch_seconds": sum(v for h, v in hooks.items() if h in RECURRING),
                    "per_epoch_share": sum(v for h, v in hooks.items() if h in RECURRING) / epochs if epochs else None,
                    "once_seconds": {h: v for h, v in hooks.items() if h in ONCE},
                    "test_seconds": sum(v for h, v in hooks.items() if h in TEST),
                }
                for name, hooks in self.seconds.items()
            },
        }
        self.path.write_text(json.dumps(record, indent=1))


def run(run_dir: Path, overrides: list[str], threads: int | None = None) -> dict:
    """Trains once in a fresh process with the timer first among the callbacks."""
    timer = run_dir / "hook_seconds.json"
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from runs import environment
from train import train
environment.setup()
with initialize_config_dir(config_dir={str(ROOT / "conf")!r}, version_base="1.3"):
    cfg = compose(config_name="train", overrides={[*overrides, f"paths.output_dir={run_dir}"]!r})
with open_dict(cfg):
    cfg.callbacks = {{"hook_timer": {{"_target_": "benchmarks.callback_cost.HookTimer", "path": {str(timer)!r}}},
                     **dict(cfg.callbacks)}}
train(cfg)
"""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.log", "w") as out:
        command = [sys.executable, "-c", code]
        subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return json.loads(timer.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    overrides = [f"trainer.max_epochs={args.epochs}", *args.overrides]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lookout-cost-") as tmp:
        result = run(Path(tmp) / "run", overrides, args.threads)
    result = {
        "machine": machine(),
        "command": "python -m benchmarks.callback_cost "
        + " ".join(
            [f"--epochs {args.epochs}", *([f"--threads {args.threads}"] if args.threads else []), *args.overrides]
        ),
        "total_seconds": time.perf_counter() - started,
        **result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "callback_cost.json").write_text(json.dumps(result, indent=1))
    print(f"epochs: {result['epoch_seconds_total']:.1f} s in all\n")
    print("| callback | per epoch (s) | share of epoch time | once per fit (s) | at test (s) |")
    print("|---|---|---|---|---|")
    for name, cost in sorted(result["callbacks"].items(), key=lambda kv: -kv[1]["per_epoch_seconds"]):
        once = sum(cost["once_seconds"].values())
        print(
            f"| {name} | {cost['per_epoch_seconds'] / max(1, result['epochs']):.2f} | "
            f"{100 * (cost['per_epoch_share'] or 0):.2f}% | {once:.2f} | {cost['test_seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
