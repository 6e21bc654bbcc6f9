"""Which labels are probably wrong: the callback that follows every training sample through the epochs
of one run, checks validation labels with confident learning, and writes the suspects (reports,
gallery, data map). The scores themselves are in ``callbacks.label_scores``. (Some 340 lines: the
callback, its two report files and its two figures are read together.)"""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from callbacks import rendering
from callbacks.label_scores import TrainingDynamics, confident_learning
from callbacks.outputs_reader import Need, OutputsReader
from callbacks.rendering import BAD, GOOD, INK
from callbacks.sample_outputs import EpochOutputs
from runs.folder import RunFolder

SCORE_HEADER = [
    "split",
    "index",
    "path",
    "given_label",
    "suggested_label",
    "score",
    "flagged",
    "method",
    "aum",
    "confidence",
    "variability",
    "forgetting_events",
    "wrong_last_epoch",
    "epochs_seen",
    "cleanlab_quality",
]


class LabelSuspects(OutputsReader):
    """Ranks the training samples whose labels are probably wrong, with the evidence.

    Every training epoch it reads the logits of the training forward passes (gathered across
    ranks by :class:`SampleOutputs`) and updates AUM, cartography confidence/variability and
    forgetting events per sample. A training sample is *flagged* when its AUM is below
    ``max_margin`` (by default: on average another class out-scored the given label) and the
    model still contradicts its label at the last epoch, after at least ``min_epochs``
    epochs. Validation samples, whose predictions are out-of-sample,
    are checked with cleanlab's confident learning on the last epoch's probabilities.

    At the end of fitting (and every ``every_n_epochs`` if set) it writes
    ``reports/label_suspects.csv`` (the images the data audit found filed under two labels first,
    then the flagged samples, most suspect first: path, given and suggested label, score and
    each component) and ``reports/label_scores.csv`` (every
    training sample), and logs a gallery of the top suspects and the data map.

    Args:
        every_n_epochs: also write reports during training, every n epochs (0: only at the end).
        max_margin: flag training samples whose AUM is below this (logit units).
        min_epochs: epochs a sample must be seen before it can be flagged.
        cleanlab_on_val: run confident learning on validation probabilities.
        gallery_size: suspects shown in the gallery.
        thumbnail_size: gallery thumbnail side in px.

    Raises:
        ValueError: an argument is out of range.

    Example::

        trainer = Trainer(callbacks=[LabelSuspects(max_margin=0.0)])
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        max_margin: float = 0.0,
        min_epochs: int = 2,
        cleanlab_on_val: bool = True,
        gallery_size: int = 24,
        thumbnail_size: int = 96,
    ) -> None:
        if every_n_epochs < 0 or min_epochs < 1 or gallery_size < 1 or thumbnail_size < 16:
            raise ValueError(
                f"LabelSuspects(every_n_epochs={every_n_epochs}, min_epochs={min_epochs}, gallery_size={gallery_size}, "
                f"thumbnail_size={thumbnail_size}): need every_n_epochs >= 0, min_epochs >= 1, gallery_size >= 1, "
                "thumbnail_size >= 16."
            )
        self.every_n_epochs, self.max_margin, self.min_epochs = every_n_epochs, max_margin, min_epochs
        self.cleanlab_on_val, self.gallery_size = cleanlab_on_val, gallery_size
        self.thumbs = rendering.ThumbnailCache(thumbnail_size)
        self.dynamics: TrainingDynamics | None = None
        self._pending_state: dict[str, Any] | None = None

    # The default state key (the class name) on purpose: the flagging settings may change on
    # resume without losing the statistics, which do not depend on them.

    @override
    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        if stage != "fit":
            return []
        # O(N) label statistics are enough for training; cleanlab needs the validation probabilities.
        return [Need("train", logits=False)] + ([Need("val")] if self.cleanlab_on_val else [])

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self.dynamics = TrainingDynamics(len(trainer.datamodule.samples["train"]))
        if self._pending_state is not None:
            self.dynamics.load_state_dict(self._pending_state)
            self._pending_state = None

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Collective: every rank gathers (a cached no-op if a review callback already did).
        if self.cleanlab_on_val and self.outputs is not None and not trainer.sanity_checking:
            self.outputs.gather(trainer, pl_module, "val")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.outputs is None or self.dynamics is None:
            return
        epoch = self.outputs.gather(trainer, pl_module, "train")
        if epoch is not None and len(epoch):
            self.dynamics.update(epoch.index, epoch.margin, epoch.p_target, epoch.other_class)
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        due = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if due and not last and trainer.is_global_zero:  # the last epoch is written by on_fit_end
            self.write(trainer, step=trainer.current_epoch)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.dynamics is not None and trainer.is_global_zero:
            # current_epoch now counts the finished epochs: step = the last one trained.
            self.write(trainer, step=max(0, trainer.current_epoch - 1))

    # ------------------------------------------------------------------ findings
    def table(self, trainer: Trainer) -> list[dict[str, Any]]:
        """One row per training sample (and per validation sample checked by cleanlab), most suspect first."""
        datamodule = trainer.datamodule
        names = datamodule.class_names
        samples = datamodule.samples["train"]
        targets = datamodule.targets("train")
        stats = self.dynamics.scores()
        flagged = self.dynamics.flagged(self.max_margin, self.min_epochs)
        rows = []
        for i in np.flatnonzero(self.dynamics.seen > 0):
            other = self.dynamics.other_class[i]
            rows.append(
                {
                    "split": "train",
                    "index": int(i),
                    "path": samples[i].path,
                    "given_label": names[targets[i]],
                    "suggested_label": names[other] if other >= 0 else "",
                    "score": float(stats["score"][i]),
                    "flagged": bool(flagged[i]),
                    "method": "training_dynamics",
                    "aum": float(stats["aum"][i]),
                    "confidence": float(stats["confidence"][i]),
                    "variability": float(stats["variability"][i]),
                    "forgetting_events": int(stats["forgetting"][i]),
                    "wrong_last_epoch": bool(self.dynamics.last_correct[i] == 0),
                    "epochs_seen": int(self.dynamics.seen[i]),
                    "cleanlab_quality": "",
                }
            )
        if self.cleanlab_on_val and self.outputs is not None:
            rows += self._confident_learning(trainer, self.outputs.latest("val"))
        rows.sort(key=lambda r: (not r["flagged"], -r["score"]))
        return rows

    def _confident_learning(self, trainer: Trainer, val: EpochOutputs | None) -> list[dict[str, Any]]:
        if val is None or len(val) < 2:
            return []
        names = trainer.datamodule.class_names
        samples = trainer.datamodule.samples["val"]
        try:
            issues, quality = confident_learning(val.target, val.probs)
        except (ValueError, IndexError) as err:  # e.g. classes absent from the validation split
            rank_zero_warn(f"LabelSuspects: confident learning on the validation split failed: {err}")
            return []
        return [
            {
                "split": "val",
                "index": int(i),
                "path": samples[i].path,
                "given_label": names[val.target[r]],
                "suggested_label": names[val.other_class[r]],  # the most likely class but the given one
                "score": float(1 - quality[r]),
                "flagged": bool(issues[r]),
                "method": "confident_learning",
                "aum": "",
                "confidence": "",
                "variability": "",
                "forgetting_events": "",
                "wrong_last_epoch": bool(val.margin[r] < 0),
                "epochs_seen": "",
                "cleanlab_quality": float(quality[r]),
            }
            for r, i in enumerate(val.index)
        ]

    def write(self, trainer: Trainer, step: int) -> None:
        rows = self.table(trainer)
        folder = RunFolder.of(trainer)

        def as_row(r: dict[str, Any]) -> list:
            return [round(v, 5) if isinstance(v, float) else v for v in (r[k] for k in SCORE_HEADER)]

        folder.write_csv("label_scores.csv", SCORE_HEADER, [as_row(r) for r in rows if r["split"] == "train"])
        suspects = conflicts_first(trainer, rows)
        folder.write_csv("label_suspects.csv", SCORE_HEADER, [as_row(r) for r in suspects])
        n_train = sum(r["split"] == "train" for r in suspects)
        text = (
            f"**epoch {step}: {n_train} training and {len(suspects) - n_train} validation samples flagged** "
            f"(reports/label_suspects.csv). Top suspects:\n\n"
            + rendering.markdown_table(
                ["split", "index", "given", "suggested", "score", "aum", "path"],
                [
                    [r["split"], r["index"], r["given_label"], r["suggested_label"], r["score"], r["aum"], r["path"]]
                    for r in suspects[:20]
                ],
            )
        )
        # Not the gallery's tag: TensorBoard files a tag under the first plugin that writes it.
        rendering.log_text(trainer, "train/label_suspects_table", text, step)
        if rendering.tensorboard(trainer) is not None:
            top = suspects[: self.gallery_size]
            images = [self.thumbs(r["path"]) for r in top]
            captions = [
                [
                    (f"given: {r['given_label']}", BAD),
                    (f"suggest: {r['suggested_label']}", GOOD),
                    (f"{r['split']} #{r['index']} s={r['score']:.2f}", INK),
                ]
                for r in top
            ]
            title = f"epoch {step}: top label suspects ({len(suspects)} flagged), given label in red"
            rendering.log_image(trainer, "train/label_suspects", rendering.gallery(images, captions, title=title), step)
            rendering.log_image(trainer, "train/data_map", self._data_map(trainer, step), step)

    def _data_map(self, trainer: Trainer, step: int) -> np.ndarray:
        import matplotlib.pyplot as plt

        stats = self.dynamics.scores()
        seen = self.dynamics.seen > 0
        flagged = self.dynamics.flagged(self.max_margin, self.min_epochs)
        injected = np.zeros(len(seen), bool)
        flipped = [f["index"] for f in trainer.datamodule.catalogue.injected_noise if f["split"] == "train"]
        injected[flipped] = True
        fig, ax = plt.subplots(figsize=(8, 6.5), dpi=100, layout="constrained")
        rest = seen & ~flagged
        ax.scatter(
            stats["variability"][rest],
            stats["confidence"][rest],
            s=6,
            c="#7f8c8d",
            alpha=0.4,
            linewidths=0,
            label=f"not flagged ({rest.sum()})",
        )
        ax.scatter(
            stats["variability"][flagged],
            stats["confidence"][flagged],
            s=14,
            c="#c0392b",
            alpha=0.8,
            linewidths=0,
            label=f"flagged ({flagged.sum()})",
        )
        if injected.any():
            ax.scatter(
                stats["variability"][injected],
                stats["confidence"][injected],
                s=40,
                facecolors="none",
                edgecolors="black",
                linewidths=0.7,
                label=f"labels flipped on purpose ({injected.sum()})",
            )
        ax.set_xlabel("variability (std of p(given label) over epochs)")
        ax.set_ylabel("confidence (mean p(given label) over epochs)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(
            f"data map, epoch {step}: easy = top, ambiguous = right, likely mislabelled = bottom left", fontsize=10
        )
        ax.legend(loc="upper right", fontsize=8)
        return rendering.figure_to_array(fig)

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return self.dynamics.state_dict() if self.dynamics is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.dynamics is None:  # restored before setup: apply there
            self._pending_state = state_dict
        else:
            self.dynamics.load_state_dict(state_dict)


def conflicts_first(trainer: Trainer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flagged rows, after every image the run's data audit found filed under two labels
    (``reports/audit/conflicting_labels.csv``): the same picture with two labels is a certain label
    error, so those come first (``method = conflicting_labels``, ``score = 1``), each group with
    one suggested label (:func:`data_audit.conflict_suggestions`), so relabelling by the
    suggestions makes the copies agree."""
    from data_audit import conflict_suggestions, read_audit

    suspects = [r for r in rows if r["flagged"]]
    tables = read_audit(RunFolder.of(trainer).reports / "audit")
    if tables is None or tables.conflicts.empty:
        return suspects
    samples = trainer.datamodule.samples
    position = {s.path: (split, i) for split, group in samples.items() for i, s in enumerate(group)}
    known = {r["path"]: r for r in rows}
    # What the model predicts: the strongest other class where it contradicts the label, else the label.
    predicted = {r["path"]: r["suggested_label"] if r["wrong_last_epoch"] else r["given_label"] for r in rows}
    suggestion = conflict_suggestions(tables.conflicts, predicted)
    first = []
    for conflict in tables.conflicts.itertuples(index=False):
        if conflict.path not in position:
            continue
        split, index = position[conflict.path]
        row = dict(known.get(conflict.path) or dict.fromkeys(SCORE_HEADER, ""))
        row.update(
            split=split,
            index=index,
            path=conflict.path,
            given_label=conflict.label,
            suggested_label=suggestion[conflict.path],
            score=1.0,
            flagged=True,
            method="conflicting_labels",
        )
        first.append(row)
    listed = {r["path"] for r in first}
    return first + [r for r in suspects if r["path"] not in listed]
