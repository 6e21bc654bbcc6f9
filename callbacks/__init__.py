"""Data-quality callbacks, one per module, and the per-sample plumbing they share."""

from callbacks.augmentation_preview import AugmentationPreview
from callbacks.class_thresholds import ClassThresholds
from callbacks.confusion_matrix import ConfusionMatrix
from callbacks.embedding_projector import EmbeddingProjector
from callbacks.hardest_errors import HardestErrors
from callbacks.heldout_predictions import HeldoutPredictions
from callbacks.label_suspects import LabelSuspects, TrainingDynamics
from callbacks.outputs_reader import Need, OutputsReader
from callbacks.per_class_metrics import PerClassMetrics
from callbacks.sample_outputs import EpochOutputs, SampleOutputs
from callbacks.unfamiliar_inputs import UnfamiliarInputs

__all__ = [
    "AugmentationPreview",
    "ClassThresholds",
    "ConfusionMatrix",
    "EmbeddingProjector",
    "EpochOutputs",
    "HardestErrors",
    "HeldoutPredictions",
    "LabelSuspects",
    "Need",
    "OutputsReader",
    "PerClassMetrics",
    "SampleOutputs",
    "TrainingDynamics",
    "UnfamiliarInputs",
]
