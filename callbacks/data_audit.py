"""The data audit in TensorBoard: what each class really contains, duplicates, leakage, quality
outliers and class balance, before the first epoch.

The audit runs before the model is built (``runs/audit_step.py``, called by ``train.py`` on global
rank zero; or ``audit.py``) and writes ``reports/audit/``. The panels read those files back
(:func:`data_audit.read_audit`), so they show exactly what the report files say, and
``audit.py`` draws the same panels with :class:`AuditPanels` and a plain ``SummaryWriter``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from callbacks import rendering
from callbacks.outputs_reader import check_datamodule
from callbacks.rendering import BAD, INK
from data_audit import FLAGS, AuditTables, duplicate_groups, quality_outliers, read_audit
from data_audit.quality import SCORE_MEANING
from datamodules import Sample
from runs.folder import RunFolder

GREY = (110, 110, 110)
TAGS = {
    "look": "audit/look_at_your_data",
    "duplicates": "audit/duplicate_groups",
    "leakage": "audit/leakage",
    "quality": "audit/quality_{flag}",
    "balance": "audit/class_balance",
    "summary": "audit/summary",
}
"""TensorBoard tags: one image per panel (quality: one per flag that any image raised), the summary as text."""


def class_examples(
    samples: Sequence[Sample], *, per_class: int, max_classes: int, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """A seeded random choice of ``per_class`` samples of each of the first ``max_classes`` classes
    (sorted): ``{label: [(path, "#index"), ...]}``; a sample's index is its position in ``samples``."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_class.setdefault(str(sample.label), []).append(i)
    out = {}
    for label in sorted(by_class)[:max_classes]:
        members = by_class[label]
        chosen = np.sort(rng.choice(len(members), size=min(per_class, len(members)), replace=False))
        out[label] = [(samples[members[k]].path, f"#{members[k]}") for k in chosen]
    return out


class AuditPanels:
    """Draws the audit's panels from its saved tables.

    Args:
        per_class: images per class in the "look at your data" grid.
        max_groups: duplicate groups shown: those with conflicting labels first, then those across
            splits, largest first within each.
        max_group_size: images shown per group (the rest are counted).
        max_leaked: leaked images shown, each beside its twin.
        max_outliers: images per quality-flag gallery, worst first.
        thumbnail_size: tile side in px.
    """

    def __init__(
        self,
        *,
        per_class: int = 8,
        max_groups: int = 12,
        max_group_size: int = 6,
        max_leaked: int = 12,
        max_outliers: int = 16,
        thumbnail_size: int = 96,
    ) -> None:
        self.per_class, self.max_groups, self.max_group_size = per_class, max_groups, max_group_size
        self.max_leaked, self.max_outliers = max_leaked, max_outliers
        self.thumbs = rendering.ThumbnailCache(thumbnail_size)
        self.blank = np.full((thumbnail_size, thumbnail_size, 3), 255, np.uint8)

    def log(self, writer, tables: AuditTables, examples: dict[str, list[tuple[str, str]]], step: int) -> list[str]:
        """Writes every panel with ``writer`` (a TensorBoard ``SummaryWriter``); returns the tags written."""
        images = {TAGS["look"]: self.look(examples, classes=tables.counts.get("classes", len(examples)))}
        if len(tables.duplicates):
            images[TAGS["duplicates"]] = self.duplicates(tables)
        if len(tables.leakage):
            images[TAGS["leakage"]] = self.leakage(tables)
        for flag in FLAGS:
            outliers = quality_outliers(tables, flag, limit=self.max_outliers) if len(tables.quality) else []
            if len(outliers):
                images[TAGS["quality"].format(flag=flag)] = self.quality(tables, flag, outliers)
        if len(tables.class_balance):
            images[TAGS["balance"]] = self.balance(tables)
        for tag, image in images.items():
            writer.add_image(tag, image, global_step=step, dataformats="HWC")
        writer.add_text(TAGS["summary"], tables.markdown or "_no audit summary_", global_step=step)
        return [*images, TAGS["summary"]]

    # ------------------------------------------------------------------ panels
    def look(self, examples: dict[str, list[tuple[str, str]]], classes: int) -> np.ndarray:
        images, captions = [], []
        for label, items in examples.items():
            for path, caption in items:
                images.append(self.thumbs(path))
                captions.append([(label, INK), (caption, GREY)])
            for _ in range(self.per_class - len(items)):  # one row per class
                images.append(self.blank)
                captions.append([("", INK), ("", INK)])
        shown = f"{len(examples)} of {classes} classes" if classes > len(examples) else f"{len(examples)} classes"
        title = (
            f"look at your data: {self.per_class} random training images per class ({shown}). Does each class "
            "hold what its name says, and only that?"
        )
        return rendering.gallery(images, captions, columns=self.per_class, title=title)

    def duplicates(self, tables: AuditTables) -> np.ndarray:
        # Certain label errors first, then groups that leak across splits, then the rest; largest first in each.
        groups = sorted(duplicate_groups(tables), key=lambda g: (not g.conflicting, not g.leaking))[: self.max_groups]
        images, captions = [], []
        for group in groups:
            shown = min(len(group.paths), self.max_group_size)
            if len(images) % self.max_group_size + shown > self.max_group_size:  # a group never wraps: new row
                for _ in range(-len(images) % self.max_group_size):
                    images.append(self.blank)
                    captions.append([("", INK), ("", INK)])
            for k, path in enumerate(group.paths[:shown]):
                images.append(self.thumbs(path))
                colour = BAD if group.labels[k] != group.labels[0] else INK
                link = "kept" if k == 0 else _link(group.methods[k], group.distances[k])
                if k == shown - 1 and len(group.paths) > shown:
                    link += f" +{len(group.paths) - shown} more"
                captions.append([(f"{group.splits[k]}: {group.labels[k]}", colour), (link, GREY)])
        c = tables.counts
        title = (
            f"duplicate groups ({len(groups)} of {c.get('duplicate_groups', len(groups))} shown; "
            f"{c.get('redundant_copies', '?')} redundant copies): groups with conflicting labels first, then those "
            "across splits, largest first. Each group starts with the image kept ('kept'); a label in red differs "
            "from it (a certain label error)."
        )
        return rendering.gallery(images, captions, columns=self.max_group_size, title=title)

    def leakage(self, tables: AuditTables) -> np.ndarray:
        images, captions = [], []
        for row in tables.leakage.head(self.max_leaked).itertuples(index=False):
            images += [self.thumbs(row.path), self.thumbs(row.twin_path)]
            other = row.twin_label != row.label  # also a conflict: the same picture, another label
            captions += [
                [(f"{row.split}: {row.label}", BAD), (_link(row.method, row.distance), GREY)],
                [
                    (f"{row.twin_split} twin: {row.twin_label}", BAD if other else INK),
                    ("other label" if other else "", BAD),
                ],
            ]
        title = (
            f"leakage: {len(tables.leakage)} val/test images with a twin in an earlier split, each beside its twin "
            f"({min(self.max_leaked, len(tables.leakage))} shown). They inflate every metric: set them aside with "
            "audit.drop_leaked=true, or drop them with data.exclude=<run>/reports/audit/leakage.csv."
        )
        return rendering.gallery(images, captions, columns=6, title=title)

    def quality(self, tables: AuditTables, flag: str, outliers: pd.DataFrame) -> np.ndarray:
        images = [self.thumbs(path) for path in outliers["path"]]
        captions = [
            [(f"{row.split}: {row.label}", INK), (f"score {row.score:.3g}", GREY)]
            for row in outliers.itertuples(index=False)
        ]
        total = tables.counts.get("quality_flagged", {}).get(flag, len(outliers))
        title = f"{flag}: {total} images, worst first ({len(outliers)} shown). Score: {SCORE_MEANING[flag]}."
        return rendering.gallery(images, captions, columns=8, title=title)

    def balance(self, tables: AuditTables) -> np.ndarray:
        import matplotlib.pyplot as plt

        table = tables.class_balance
        splits = [c for c in table.columns if c not in ("label", "total", "share")]
        if len(table) > 60:  # a readable chart: the 30 largest and the 30 smallest classes
            ordered = table.sort_values("total", ascending=False, kind="stable")
            table = pd.concat([ordered.head(30), ordered.tail(30)])
        summary = tables.summary.get("class_balance", {})
        fig, ax = plt.subplots(figsize=(9, 0.26 * len(table) + 1.8), dpi=100, layout="constrained")
        left = np.zeros(len(table))
        colours = {"train": "#2471a3", "val": "#e67e22", "test": "#27ae60"}
        for split in splits:
            counts = table[split].fillna(0).to_numpy(dtype=float)
            ax.barh(range(len(table)), counts, left=left, color=colours.get(split, "#7f8c8d"), label=split)
            left += counts
        ax.set_yticks(range(len(table)), labels=table["label"].astype(str).tolist(), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("images")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ratio = summary.get("imbalance_ratio")
        title = f"class balance: {summary.get('classes', len(table))} classes"
        title += f", largest/smallest = {ratio:.1f}" if isinstance(ratio, int | float) else ", a class has none"
        floors = {s: a for s, a in (summary.get("majority_accuracy") or {}).items() if isinstance(a, int | float)}
        if floors:
            scores = ", ".join(f"{s} {a:.1%}" for s, a in floors.items())
            title += f"\nalways predicting {summary.get('majority_class')!r} scores {scores}: the floor to beat"
        ax.set_title(title, fontsize=10)
        return rendering.figure_to_array(fig)


def _link(method: str, distance: float) -> str:
    """How an image is linked to its group, in the method's own unit."""
    if method == "phash":
        return f"hash {distance:.0f} bits"
    if method == "embedding":
        return f"cosine {1 - distance:.2f}"
    return str(method)


class DataAudit(Callback):
    """Shows the run's data audit in TensorBoard at the start of fitting, on global rank zero.

    The audit (the ``audit`` config group) runs before the model is built and writes
    ``reports/audit/``; this callback reads those files and logs, at step 0:

    - ``audit/look_at_your_data``: ``per_class`` random training images of each class;
    - ``audit/duplicate_groups``: groups of exact and near duplicates, those with conflicting
      labels first, then those across splits;
    - ``audit/leakage``: each validation or test image beside its twin in an earlier split;
    - ``audit/quality_<flag>``: the images of each quality flag, worst first;
    - ``audit/class_balance``: images per class and split, with the majority-class accuracy floor;
    - ``audit/summary`` (text): the table and the next step of ``reports/audit/audit.md``.

    With no audit in the run (``audit=off``) it shows nothing.

    Args:
        per_class: random training images per class in the grid.
        max_classes: classes in the grid (the first ones in class order).
        max_groups: duplicate groups shown.
        max_group_size: images shown per duplicate group.
        max_leaked: leaked images shown.
        max_outliers: images per quality-flag gallery.
        thumbnail_size: tile side in px.
        seed: which images the grid shows.

    Raises:
        ValueError: an argument is out of range.

    Example::

        trainer = Trainer(callbacks=[DataAudit(per_class=6, max_classes=10)])
    """

    def __init__(
        self,
        per_class: int = 8,
        max_classes: int = 20,
        max_groups: int = 12,
        max_group_size: int = 6,
        max_leaked: int = 12,
        max_outliers: int = 16,
        thumbnail_size: int = 96,
        seed: int = 0,
    ) -> None:
        counts = {
            "per_class": per_class,
            "max_classes": max_classes,
            "max_groups": max_groups,
            "max_group_size": max_group_size,
            "max_leaked": max_leaked,
            "max_outliers": max_outliers,
        }
        if any(v < 1 for v in counts.values()) or max_group_size < 2 or thumbnail_size < 16:
            arguments = ", ".join(f"{k}={v}" for k, v in counts.items())
            raise ValueError(
                f"DataAudit({arguments}, thumbnail_size={thumbnail_size}): need counts >= 1, max_group_size >= 2 "
                "and thumbnail_size >= 16."
            )
        self.max_classes, self.seed = max_classes, seed
        self.panels = AuditPanels(
            per_class=per_class,
            max_groups=max_groups,
            max_group_size=max_group_size,
            max_leaked=max_leaked,
            max_outliers=max_outliers,
            thumbnail_size=thumbnail_size,
        )

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_datamodule(trainer, self)

    @override
    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = rendering.tensorboard(trainer)
        if writer is None:
            return
        tables = read_audit(RunFolder.of(trainer).reports / "audit")
        if tables is None:
            rank_zero_info("DataAudit: this run has no data audit (audit=off), so there is nothing to show.")
            return
        examples = class_examples(
            trainer.datamodule.samples.get("train", []),
            per_class=self.panels.per_class,
            max_classes=self.max_classes,
            seed=self.seed,
        )
        self.panels.log(writer, tables, examples, step=trainer.current_epoch)
