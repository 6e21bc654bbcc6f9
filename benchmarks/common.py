"""Running benchmark jobs in fresh processes and describing the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def compose_config(overrides: list[str], config_name: str = "train"):
    """The config ``python <config_name>.py <overrides>`` would run with, composed in this process."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run(run_dir: Path, overrides: list[str]) -> dict:
    """Trains once in a fresh process (so memory peaks are per run); returns benchmark.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    log = run_dir / "stdout.log"
    with open(log, "w") as out:
        code = subprocess.call(
            [sys.executable, "-m", "benchmarks.run_one", str(run_dir), *overrides],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise RuntimeError(f"benchmark run failed ({code}); see {log}")
    return json.loads((run_dir / "benchmark.json").read_text())


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
