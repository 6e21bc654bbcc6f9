"""The LightningModule around a timm backbone, and how its weights are loaded."""

from models.backbones import PACKAGED_WEIGHTS, WeightsError, create_backbone
from models.classifier import ImageClassifier

__all__ = ["PACKAGED_WEIGHTS", "ImageClassifier", "WeightsError", "create_backbone"]
