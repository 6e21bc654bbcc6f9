"""K-fold jobs: the held-out fold's predicted probabilities, for cross-validated confident learning."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks.outputs_reader import Need, OutputsReader
from datamodules import HELDOUT
from runs.folder import RunFolder


class HeldoutPredictions(OutputsReader):
    """Writes ``reports/heldout_probs.csv`` when a K-fold job predicts its held-out fold.

    ``train.py`` runs that prediction after fitting when ``data.num_folds`` is set; the
    probabilities are out-of-sample for every held-out sample, which is what confident
    learning needs. ``crossval_label_issues.py`` stitches the K files of a sweep together.

    Columns: ``path, index, fold, num_folds, given_label, label_id, prob_<class>...``.

    Example::

        trainer.predict(model, datamodule=datamodule)  # with HeldoutPredictions() in the callbacks
    """

    @override
    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        return [Need(HELDOUT)] if stage == "predict" and HELDOUT in trainer.datamodule.samples else []

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.outputs is None:
            return
        outputs = self.outputs.gather(trainer, pl_module, HELDOUT)  # collective: every rank
        if outputs is None or not trainer.is_global_zero:
            return
        catalogue = trainer.datamodule.catalogue
        names = catalogue.class_names
        samples = catalogue.splits[HELDOUT]
        rows = [
            [
                samples[i].path,
                int(i),
                catalogue.fold,
                catalogue.num_folds,
                names[t],
                int(t),
                *(round(float(p), 6) for p in probs),
            ]
            for i, t, probs in zip(outputs.index, outputs.target, outputs.probs, strict=True)
        ]
        header = ["path", "index", "fold", "num_folds", "given_label", "label_id", *(f"prob_{n}" for n in names)]
        RunFolder.of(trainer).write_csv("heldout_probs.csv", header, rows)
