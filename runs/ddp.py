"""DDP processes of one run: the processes Lightning starts for ranks > 0 reuse the parent's
config and run folder instead of composing their own; each job leaves the process clean for the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runs.errors import ConfigError

# Set by a run for the DDP processes Lightning starts: the resolved config they must use, and
# its SHA-256, so a child builds exactly what the parent composed from conf/ and the command
# line, never a file changed in between.
RUN_CONFIG_ENV = "LOOKOUT_RUN_CONFIG"
RUN_CONFIG_HASH_ENV = "LOOKOUT_RUN_CONFIG_SHA256"

# Set by Lightning's DDP launcher in the launching process. Left behind, they make the next
# job of a multirun believe its ranks were started externally (LOCAL_RANK is set), so it
# starts no child processes and waits for them forever.
DDP_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "RANK",
    RUN_CONFIG_ENV,
    RUN_CONFIG_HASH_ENV,
)


def share_config_with_children(cfg: DictConfig, path: Path) -> None:
    """Points the DDP processes Lightning will start at ``path``, the run's resolved ``config.yaml``.

    Lightning starts DDP ranks > 0 by re-running ``sys.argv`` with Hydra overrides; inside a
    multirun that would start a whole new sweep in every child, and outside one each child
    composes its own run folder. Children instead read this file (see :func:`child_config`).
    """
    text = path.read_text()
    os.environ[RUN_CONFIG_ENV] = str(path)
    os.environ[RUN_CONFIG_HASH_ENV] = hashlib.sha256(text.encode()).hexdigest()


def is_ddp_child() -> bool:
    """Whether this process is a DDP rank > 0 that Lightning started for a lookout run."""
    return bool(os.environ.get(RUN_CONFIG_ENV)) and int(os.environ.get("LOCAL_RANK", "0")) > 0


def is_global_zero() -> bool:
    """Whether this process is (or will be) global rank zero, as its launcher says: ``RANK``
    (torchrun), ``SLURM_PROCID`` (srun), else node and local rank (Lightning's own launcher)."""
    for key in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value) == 0
    return all(os.environ.get(key, "0") in ("", "0") for key in ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK"))


def check_process_launch(trainer) -> None:
    """Stops a run that asks Lightning to start DDP processes inside a submitit local job
    (``hydra/launcher=local``), where that cannot work.

    Lightning starts DDP ranks > 0 by running the command line again. Inside a submitit job
    the command line is submitit's job runner (``python -m submitit.core._submit``), which would
    run the pickled job once more instead of joining this one.

    Raises:
        ConfigError: more than one device per job inside a submitit local job.
    """
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = trainer.strategy
    if (
        os.environ.get("SUBMITIT_EXECUTOR") == "local"
        and isinstance(getattr(strategy, "launcher", None), _SubprocessScriptLauncher)
        and trainer.num_devices > 1
        and not strategy.cluster_environment.creates_processes_externally
    ):
        raise ConfigError(
            f"trainer.devices={trainer.num_devices} with strategy={type(strategy).__name__} inside a "
            "hydra/launcher=local job: Lightning starts DDP processes by running the command again, which "
            "inside the job is submitit's runner, not train.py. For a sweep of DDP runs on this machine leave "
            "hydra/launcher=local out (`python train.py -m ...` runs the jobs one after another, each on all "
            "its devices), or give each local job one device (trainer.devices=1)."
        )


def child_config() -> DictConfig:
    """The parent's resolved config, checked against the hash the parent handed down.

    Values in the file are literal: a ``${...}`` that was already resolved (or escaped on the
    command line) stays text instead of being interpolated a second time.

    Raises:
        ConfigError: the file changed after the parent wrote it.
    """
    text = Path(os.environ[RUN_CONFIG_ENV]).read_text()
    if hashlib.sha256(text.encode()).hexdigest() != os.environ.get(RUN_CONFIG_HASH_ENV):
        raise ConfigError(f"{os.environ[RUN_CONFIG_ENV]} changed after the run started; not using it.")
    import yaml

    return OmegaConf.create(literal(yaml.safe_load(text)))


def literal(value: Any) -> Any:
    """A plain container with every string escaped for OmegaConf, so that it reads back unchanged:
    ``${`` becomes ``\\${`` (and backslashes right before it are doubled)."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    return value


def run_job(job: Callable[[DictConfig], Any], hydra_main: Callable[[], Any]) -> None:
    """Entry point of every command: a DDP child runs ``job`` on the parent's config (and so in the
    parent's run folder); any other process composes with Hydra."""
    from runs.errors import reported

    if is_ddp_child():
        with reported():
            try:
                job(child_config())
            finally:
                end_distributed()
    else:
        hydra_main()


def end_distributed() -> None:
    """Ends the process group, so the next job of a multirun can start a fresh one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def job_scope():
    """Runs one job and leaves the process as it found it (process group, DDP variables)."""
    saved = {key: os.environ.get(key) for key in DDP_ENV}
    try:
        yield
    finally:
        end_distributed()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
