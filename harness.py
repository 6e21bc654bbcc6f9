"""What train.py and eval.py share: building the run's objects from the composed config, DDP
child processes that reuse the parent's config and run folder, and the end-of-run summary.

Only configs composed by Hydra from ``conf/`` and the command line are instantiated here;
nothing read from a checkpoint or a data file ever reaches ``instantiate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations' import otherwise calls the network

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from datamodules import report_files

ROOT = Path(__file__).resolve().parent
# Set by a run for the DDP processes Lightning starts: the resolved config they must use, and
# its SHA-256, so a child instantiates exactly what the parent composed from conf/ and the
# command line, never a file changed in between.
RUN_CONFIG_ENV = "LOOKOUT_RUN_CONFIG"
RUN_CONFIG_HASH_ENV = "LOOKOUT_RUN_CONFIG_SHA256"

OmegaConf.register_new_resolver("lookout_root", lambda: str(ROOT), replace=True)


class ConfigError(ValueError):
    """A config node cannot be built; the message names the node and the fix."""


def instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Builds every node of a config group (``callbacks``, ``logger``); ``null`` nodes are switched off.

    Raises:
        ConfigError: a node has no ``_target_`` (it would otherwise be skipped silently).
    """
    built = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(
                f"{what}.{name} has no _target_, so it cannot be built. Give it one, or switch it off with "
                f"{what}.{name}=null."
            )
        built.append(instantiate(node))
    return built


def build(cfg: DictConfig, *, num_classes_from: Callable | None = None):
    """Data module (prepared), model and trainer from ``cfg``.

    ``num_classes_from(datamodule) -> (class_names, extra model kwargs)`` lets evaluation take
    them from the checkpoint instead of the data.
    """
    datamodule = instantiate(cfg.data, augment=cfg.augment, _recursive_=False)
    datamodule.prepare(from_rank_zero=is_ddp_child())
    class_names, model_kwargs = num_classes_from(datamodule) if num_classes_from else (datamodule.class_names, {})
    # _convert_="all": plain lists/dicts in the model's hyper-parameters, so checkpoints load
    # with torch.load(weights_only=True).
    model = instantiate(
        cfg.model, num_classes=len(class_names), class_names=list(class_names), **model_kwargs, _convert_="all"
    )
    datamodule.set_preprocessing(model.data_config)
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers: list[Logger] = instantiate_group(cfg.get("logger"), "logger")
    trainer: Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def share_config_with_ddp_children(cfg: DictConfig, run_dir: Path) -> None:
    """Saves the resolved config as ``<run>/config.yaml`` and points DDP child processes at it.

    Lightning starts DDP ranks > 0 by re-running ``sys.argv`` with Hydra overrides; inside a
    multirun that would start a whole new sweep in every child, and outside one each child
    composes its own run folder. Children instead read this file (see :func:`child_config`)
    and so share the parent's run folder and config exactly.
    """
    if rank_zero_only.rank != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    text = OmegaConf.to_yaml(cfg, resolve=True)
    path.write_text(text)
    os.environ[RUN_CONFIG_ENV] = str(path)
    os.environ[RUN_CONFIG_HASH_ENV] = hashlib.sha256(text.encode()).hexdigest()


def is_ddp_child() -> bool:
    """Whether this process is a DDP rank > 0 that Lightning started for a lookout run."""
    return bool(os.environ.get(RUN_CONFIG_ENV)) and int(os.environ.get("LOCAL_RANK", "0")) > 0


def child_config() -> DictConfig:
    """The parent's resolved config, checked against the hash the parent handed down.

    Raises:
        ConfigError: the file changed after the parent wrote it.
    """
    text = Path(os.environ[RUN_CONFIG_ENV]).read_text()
    if hashlib.sha256(text.encode()).hexdigest() != os.environ.get(RUN_CONFIG_HASH_ENV):
        raise ConfigError(f"{os.environ[RUN_CONFIG_ENV]} changed after the run started; not using it.")
    return OmegaConf.create(text)


def main(job: Callable[[DictConfig], Any], hydra_main: Callable[[], Any]) -> None:
    """Entry point of train.py and eval.py: a DDP child runs ``job`` on the parent's config
    (and so in the parent's run folder); any other process composes with Hydra."""
    if is_ddp_child():
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


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not math.isnan(value):
            out[key] = value
    return out


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The values that tell runs apart, flattened for TensorBoard's hparams tab."""
    params: dict[str, Any] = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        params.update({f"choice/{k}": v for k, v in choices.items() if not k.startswith("hydra/") and v})
    except ValueError:  # not inside a Hydra job (a DDP child, a test)
        pass
    keep = {
        "model": (
            "name",
            "lr",
            "backbone_lr_scale",
            "weight_decay",
            "warmup_epochs",
            "label_smoothing",
            "freeze_backbone_epochs",
            "drop_rate",
            "pretrained",
        ),
        "data": ("source", "image_size", "batch_size", "label_noise", "label_noise_type", "num_folds", "fold"),
        "trainer": ("max_epochs", "precision", "devices"),
    }
    for group, keys in keep.items():
        for key in keys:
            value = OmegaConf.select(cfg, f"{group}.{key}")
            if value is not None:
                params[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    params["seed"] = cfg.get("seed")
    return params


@rank_zero_only
def log_hparams_with_metrics(trainer: Trainer, cfg: DictConfig, metrics: Mapping[str, float]) -> None:
    """Hyper-parameters against the run's real final metrics (``hparams/...``), once, at the end,
    so TensorBoard's hparams tab compares runs by what they achieved, not ``hp_metric = -1``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    final = {f"hparams/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hyperparameters(cfg), metrics=final)
        else:  # e.g. CSVLogger: hparams.yaml, and the final metrics as one more row
            logger.log_hyperparams(hyperparameters(cfg))
            logger.log_metrics(final, step=trainer.global_step)
        logger.save()


write_json = rank_zero_only(report_files.write_json)


@rank_zero_only
def print_summary(lines: list[str]) -> None:
    width = max(len(line) for line in lines)
    print("\n" + "=" * width, *lines, "=" * width, sep="\n", flush=True)
