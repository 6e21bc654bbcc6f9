"""Building a run's objects: the catalogue, data module, model and trainer, from the composed config.

Config is instantiated; data is passed. Only nodes composed by Hydra from ``conf/`` and the
command line reach ``instantiate``. Values that come from files a user hands over (class names,
labels, a checkpoint's architecture) are passed as ordinary Python arguments to the object
``instantiate(..., _partial_=True)`` returns, so a ``${...}`` or ``_target_`` inside them is never
resolved or built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules import Catalogue, ImageDataModule, LoaderOptions, Preprocessing
from runs import ddp, files
from runs.errors import ConfigError
from runs.folder import RunFolder

CATALOGUE_OPTIONS = (
    "source",
    "root",
    "manifest",
    "run_dir",
    "val_fraction",
    "test_fraction",
    "split_seed",
    "scan",
    "exclude",
    "relabel",
    "label_noise",
    "label_noise_type",
    "num_folds",
    "fold",
)
LOADER_OPTIONS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory")
PREPROCESSING_OPTIONS = ("image_size", "crop_pct", "interpolation", "mean", "std")
NEEDED = {"root": "DIR (a folder of class folders), e.g. data.root=~/my_images", "manifest": "FILE.csv"}


def data_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` node as plain values, checked for missing and unknown keys before anything is read.

    Raises:
        ConfigError: a required value (``???``) is missing, or an option is unknown.
    """
    node = cfg.data
    for key in node:
        if OmegaConf.is_missing(node, key):
            hint = NEEDED.get(key, "...")
            raise ConfigError(f"data={node.get('source', '?')} needs data.{key}={hint}.")
    options = OmegaConf.to_container(node, resolve=True)
    known = {*CATALOGUE_OPTIONS, *LOADER_OPTIONS, *PREPROCESSING_OPTIONS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown data option(s) {unknown}; the options are {sorted(known)}.")
    return options


def loader_options(options: dict[str, Any]) -> LoaderOptions:
    return LoaderOptions(**{k: options[k] for k in LOADER_OPTIONS if k in options})


def check_trainer_options(cfg: DictConfig) -> None:
    """Trainer values that would otherwise fail deep inside Lightning with a message that names no option.

    Raises:
        ConfigError: ``max_epochs`` is not a positive integer while no ``max_steps`` limit is set.
    """
    epochs, steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    if isinstance(steps, int) and steps > 0:
        return
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(
            f"trainer.max_epochs={epochs!r} must be a positive number of epochs: the learning-rate schedule "
            "(warm-up, then cosine decay) needs a length. Give trainer.max_epochs=N (or trainer.max_steps=N)."
        )


@contextmanager
def claimed(
    cfg: DictConfig, folder: RunFolder, *, child: bool = False, resume_from: str | None = None
) -> Iterator[RunFolder]:
    """The run folder held for one job: claimed (a busy or finished folder stops the job with one
    line), its config saved, and given up again at the end, also after an error. A DDP child only
    writes into the folder its parent holds, so it neither claims nor saves.

    Example::

        with build.claimed(cfg, RunFolder(cfg.paths.output_dir)) as folder:
            ...  # write the job's files under folder.root
    """
    if not child:
        folder.claim(resume_from=resume_from)
    try:
        if not child:
            save_config(cfg, folder)
        yield folder
    finally:
        folder.release()


def save_config(cfg: DictConfig, folder: RunFolder) -> None:
    """``config.yaml`` (resolved) and Hydra's usual ``.hydra/`` files (the composed config, Hydra's own
    config, the overrides) in the run folder, and the DDP processes Lightning will start pointed at
    it. Global rank zero only, after the folder is claimed (Hydra itself is told not to write them
    before, see conf/hydra/default.yaml)."""
    files.write_text(folder.root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    saved = {"config.yaml": OmegaConf.to_yaml(cfg)}
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        saved["hydra.yaml"] = OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg}))
        saved["overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task)))
    except ValueError:  # composed without @hydra.main (tests, benchmarks)
        saved["overrides.yaml"] = "[]\n"
    for name, text in saved.items():
        files.write_text(folder.root / ".hydra" / name, text)
    ddp.share_config_with_children(cfg, folder.root / "config.yaml")


def catalogue(
    options: dict[str, Any],
    folder: RunFolder,
    *,
    child: bool,
    timeout: float = 600.0,
    before_save: Callable[[Catalogue], None] | None = None,
) -> Catalogue:
    """The run's samples: listed and scanned by global rank zero, which saves them with the run and
    writes the data reports; loaded from the run folder by every other rank.

    Ranks started by Lightning find the file written already. Ranks started by a scheduler
    (``torchrun``, ``srun``) on other nodes wait for it, up to ``timeout`` seconds.
    ``before_save`` (global rank zero only: the data audit) may change the catalogue or stop the
    run before it is saved, so that no rank ever loads a catalogue it would change.
    """
    if child:
        deadline = time.monotonic() + timeout
        while not folder.catalogue_file.exists() and time.monotonic() < deadline:
            time.sleep(1.0)
        return Catalogue.load(folder.catalogue_file)
    built = Catalogue.build(**{k: options[k] for k in CATALOGUE_OPTIONS if k in options})
    if before_save is not None:
        before_save(built)
    built.save(folder.catalogue_file)
    built.write_reports(folder)
    return built


def preprocessing(base: dict[str, Any], options: dict[str, Any]) -> Preprocessing:
    """``base`` (the backbone's timm data config, or a checkpoint's) with the ``data.image_size`` ... overrides."""
    try:
        return Preprocessing.resolve(base, **{k: options.get(k) for k in PREPROCESSING_OPTIONS})
    except ValueError as err:
        raise ConfigError(f"data.image_size / crop_pct / interpolation / mean / std: {err}") from None


def model(cfg: DictConfig, *, class_names: list[str], **plain: Any):
    """The LightningModule of ``cfg.model``, with data-derived values passed as plain arguments."""
    factory = instantiate(cfg.model, _partial_=True, _convert_="all")
    return factory(num_classes=len(class_names), class_names=list(class_names), **plain)


def datamodule(cfg: DictConfig, catalogue: Catalogue, prep: Preprocessing, options: dict[str, Any], folder):
    augment = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") is not None else None
    return ImageDataModule(
        catalogue, prep, augment=augment, loader=loader_options(options), seed=int(cfg.seed), folder=folder
    )


def construct(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with a bad option (the object's own ``ValueError`` or
    ``TypeError``) reported as a :class:`ConfigError` naming the config key, not as Hydra's
    wrapped traceback.

    Raises:
        ConfigError: the object refused its arguments.
    """
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ValueError | TypeError):
            raise ConfigError(f"{what}: {cause}") from None
        raise


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
        built.append(construct(node, f"{what}.{name}"))
    return built


def trainer(cfg: DictConfig):
    """The Trainer with the run's callbacks and loggers (``callbacks``, ``logger`` groups)."""
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    built = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    ddp.check_process_launch(built)
    return built


def is_child() -> bool:
    """A DDP process other than global rank zero (started by Lightning, or by a scheduler)."""
    return ddp.is_ddp_child() or not ddp.is_global_zero()


def run_folder_of_checkpoint(path: str | Path) -> Path:
    return Path(path).expanduser().absolute().parent.parent
