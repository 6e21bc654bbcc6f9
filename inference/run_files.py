"""What a training run leaves for using its model, and whether it fits the checkpoint at hand.

At the end of training the run saves per-class thresholds (``reports/thresholds.csv``, with
``reports/thresholds.json`` naming the checkpoint epoch and temperature they were fitted with) and
the unfamiliar-input index (``familiarity/``, whose ``familiarity.json`` names the epoch of the
weights that made the embeddings). Both describe the best checkpoint. Given another checkpoint of
the run (``last.ckpt`` of a later epoch), its logits and embeddings are not the ones they were
fitted on, so ``auto`` leaves them out and says why; a path given explicitly is used as given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from inference.familiarity import SETTINGS_FILE, FamiliarityIndex
from inference.thresholds import read_thresholds
from runs.errors import ConfigError

AUTO = "auto"
THRESHOLDS = Path("reports") / "thresholds.csv"
THRESHOLDS_SUMMARY = Path("reports") / "thresholds.json"
INDEX_FOLDER = "familiarity"


@dataclass
class RunFiles:
    """Thresholds, index and temperature chosen for one prediction, with where each came from.

    Attributes:
        thresholds: ``{class: threshold}`` (``inf``: never emitted); empty: none.
        thresholds_from: where they came from, or why there are none.
        familiarity: the unfamiliar-input index, or ``None``.
        familiarity_from: where it came from, or why there is none.
        temperature: the run's temperature for the checkpoint (``None``: not known here).
        notes: what was left out and why, for the summary.
    """

    thresholds: dict[str, float] = field(default_factory=dict)
    thresholds_from: str = "none"
    familiarity: FamiliarityIndex | None = None
    familiarity_from: str = "none"
    temperature: float | None = None
    notes: list[str] = field(default_factory=list)


def class_list(value) -> list[str]:
    """``predict.blocked_classes`` as class names: a list, or one name (Hydra reads ``=3`` as the number 3)."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def off(setting) -> bool:
    """``null``, ``none``, ``false`` or an empty string switch a file off."""
    return setting is None or setting is False or str(setting).strip().lower() in ("", "none", "null", "false")


def thresholds_file(path: str | Path, class_names: list[str]) -> dict[str, float]:
    """``predict.thresholds=FILE``, checked against the model's classes.

    Raises:
        ConfigError: the file is missing or does not fit the model.
    """
    try:
        return read_thresholds(Path(path).expanduser(), class_names)
    except FileNotFoundError:
        raise ConfigError(f"predict.thresholds={str(path)!r} does not exist; give a thresholds.csv or null.") from None
    except ValueError as err:
        raise ConfigError(f"predict.thresholds: {err}") from None


def index_folder(path: str | Path) -> FamiliarityIndex:
    """``predict.familiarity=DIR``, read and checked.

    Raises:
        ConfigError: the folder is missing or not an index.
    """
    folder = Path(path).expanduser()
    try:
        return FamiliarityIndex.load(folder)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"predict.familiarity={str(path)!r} is not an unfamiliar-input index ({err}). Give the familiarity/ "
            "folder of a training run, or predict.familiarity=null."
        ) from None


def for_checkpoint(run_dir: Path, epoch: int | None, class_names: list[str], thresholds, familiarity) -> RunFiles:
    """The files to use with a checkpoint of ``run_dir`` saved at ``epoch``.

    Args:
        run_dir: the checkpoint's run folder.
        epoch: the checkpoint's epoch.
        class_names: the checkpoint's classes.
        thresholds: ``predict.thresholds``: ``auto``, a path, or off.
        familiarity: ``predict.familiarity``: ``auto``, a path, or off.
    """
    found = RunFiles()
    if off(thresholds):
        found.thresholds_from = "off (predict.thresholds=null)"
    elif thresholds != AUTO:
        found.thresholds, found.thresholds_from = thresholds_file(thresholds, class_names), str(thresholds)
    elif (run_dir / THRESHOLDS).is_file():
        summary = _json(run_dir / THRESHOLDS_SUMMARY)
        fitted = summary.get("epoch")
        if epoch is not None and isinstance(fitted, int) and fitted != epoch:
            found.notes.append(
                f"{run_dir / THRESHOLDS} was fitted for the checkpoint of epoch {fitted}, not this one "
                f"(epoch {epoch}): not used. Predict with that checkpoint (best.ckpt), or give predict.thresholds=FILE."
            )
            found.thresholds_from = f"none (the run's are for epoch {fitted})"
        else:
            found.thresholds = thresholds_file(run_dir / THRESHOLDS, class_names)
            found.thresholds_from = str(run_dir / THRESHOLDS)
            temperature = summary.get("temperature")
            if isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0:
                found.temperature = float(temperature)
    else:
        found.thresholds_from = "none (the run has no reports/thresholds.csv)"

    if off(familiarity):
        found.familiarity_from = "off (predict.familiarity=null)"
    elif familiarity != AUTO:
        found.familiarity, found.familiarity_from = index_folder(familiarity), str(familiarity)
    elif (run_dir / INDEX_FOLDER / SETTINGS_FILE).is_file():
        index = index_folder(run_dir / INDEX_FOLDER)
        made = index.info.get("epoch")
        if epoch is not None and isinstance(made, int) and made != epoch:
            found.notes.append(
                f"{run_dir / INDEX_FOLDER} holds embeddings of the checkpoint of epoch {made}, not this one (epoch "
                f"{epoch}): no unfamiliar-input flags. Predict with that checkpoint, or give predict.familiarity=DIR."
            )
            found.familiarity_from = f"none (the run's index is for epoch {made})"
        else:
            found.familiarity, found.familiarity_from = index, str(run_dir / INDEX_FOLDER)
    else:
        found.familiarity_from = "none (the run has no familiarity/ index)"
    return found


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
