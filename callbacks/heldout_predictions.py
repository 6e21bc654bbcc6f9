"""K-fold jobs: the held-out fold's predicted probabilities, for cross-validated confident learning."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks import rendering
from callbacks.review import check_datamodule
from callbacks.sample_outputs import SampleOutputs, shared_outputs
from datamodules import HELDOUT


class HeldoutPredictions(Callback):
    """Writes ``reports/heldout_probs.csv`` when a K-fold job predicts its held-out fold.

    ``train.py`` runs that prediction after fitting when ``data.num_folds`` is set; the
    probabilities are out-of-sample for every held-out sample, which is what confident
    learning needs. ``crossval_label_issues.py`` stitches the K files of a sweep together.

    Columns: ``path, index, fold, num_folds, given_label, label_id, prob_<class>...``.

    Example::

        trainer.predict(model, datamodule=datamodule)  # with HeldoutPredictions() in the callbacks
    """

    def __init__(self) -> None:
        self.outputs: SampleOutputs | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            check_datamodule(trainer, self)
            self.outputs = shared_outputs(trainer)
            self.outputs.require(HELDOUT)

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.outputs is None:
            return
        outputs = self.outputs.gather(trainer, pl_module, HELDOUT)  # collective: every rank
        if outputs is None or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        names = datamodule.class_names
        samples = datamodule.samples[HELDOUT]
        rows = [
            [
                samples[i].path,
                int(i),
                datamodule.fold,
                datamodule.num_folds,
                names[t],
                int(t),
                *(round(float(p), 6) for p in probs),
            ]
            for i, t, probs in zip(outputs.index, outputs.target, outputs.probs, strict=True)
        ]
        header = ["path", "index", "fold", "num_folds", "given_label", "label_id", *(f"prob_{n}" for n in names)]
        rendering.write_csv(rendering.reports_dir(trainer) / "heldout_probs.csv", header, rows)
