"""The LightningModule: one forward pass for logits and embedding, the schedule, the frozen backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from callbacks.sample_outputs import label_statistics
from models import ImageClassifier
from models.classifier import _warmup_cosine
from tests.helpers import Recorder
from train import train


def test_logits_and_embedding_come_from_one_pass_and_match_forward():
    model = ImageClassifier(name="test_convnext", num_classes=4).eval()
    images = torch.randn(3, 3, 32, 32)
    logits, embedding = model.forward_with_embedding(images)
    assert torch.allclose(logits, model(images), atol=1e-6)
    assert embedding.shape == (3, model.backbone.num_features)


def test_channels_last_changes_the_memory_layout_not_the_outputs():
    torch.manual_seed(0)
    plain = ImageClassifier(name="test_efficientnet", num_classes=4).eval()
    nhwc = ImageClassifier(name="test_efficientnet", num_classes=4, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    nhwc.setup("fit")
    assert nhwc.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    batch = {"image": torch.randn(3, 3, 32, 32), "target": torch.tensor([0, 1, 2]), "index": torch.arange(3)}
    torch.testing.assert_close(nhwc._step(batch).logits, plain._step(batch).logits, rtol=1e-4, atol=1e-5)


def test_warmup_then_cosine_schedule():
    factor = _warmup_cosine(total=100, warmup=10, floor=0.01)
    assert factor(0) == 1 / 11 and factor(9) == 10 / 11
    assert factor(10) == 1.0
    assert math.isclose(factor(55), 0.01 + 0.99 * 0.5, rel_tol=1e-6)  # half way down the cosine
    assert math.isclose(factor(100), 0.01)
    frozen = _warmup_cosine(total=100, warmup=10, floor=0.01, start=20)
    assert frozen(19) == 0.0 and frozen(20) == 1 / 11 and frozen(30) == 1.0


def test_frozen_backbone_keeps_its_weights_and_statistics_for_the_first_epochs(tiny_cfg):
    cfg = tiny_cfg(
        "trainer.max_epochs=2",
        "model.freeze_backbone_epochs=1",
        "model.name=test_efficientnet",  # has BatchNorm
        "callbacks=minimal",
        "+callbacks.recorder._target_=tests.helpers.Recorder",
    )
    train(cfg)
    start, after_frozen, after_unfrozen = Recorder.last.backbone_states
    head = ("classifier.weight", "classifier.bias")
    for key, value in start.items():
        if key in head or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, after_frozen[key]), key  # weights and BatchNorm statistics
    assert not torch.equal(start["classifier.weight"], after_frozen["classifier.weight"])
    # Once unfrozen, the backbone trains and its BatchNorm statistics update again.
    statistics = [k for k in start if k.endswith("running_mean") and k not in head]
    assert statistics and all(not torch.equal(after_frozen[k], after_unfrozen[k]) for k in statistics)
    weights = [k for k in start if k.endswith("conv.weight") or k.endswith("conv_stem.weight")]
    assert any(not torch.equal(after_frozen[k], after_unfrozen[k]) for k in weights)
    # No backward pass through the frozen backbone: AdamW kept no moments or step count for it
    # (so no weight decay either); its state starts at the first unfrozen step.
    frozen_steps, unfrozen_steps = Recorder.last.optimizer_steps
    assert set(frozen_steps) == set(head)
    steps_per_epoch = frozen_steps["classifier.weight"]
    assert steps_per_epoch > 0 and unfrozen_steps["classifier.weight"] == 2 * steps_per_epoch
    backbone = set(unfrozen_steps) - set(head)
    assert backbone == {name for name in start if name not in head and not name.endswith(BUFFERS)}
    assert {unfrozen_steps[name] for name in backbone} == {steps_per_epoch}


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def test_training_epochs_keep_label_statistics_not_logits(tiny_cfg):
    train(tiny_cfg("trainer.max_epochs=1", "+callbacks.recorder._target_=tests.helpers.Recorder"))
    train_outputs, val_outputs = Recorder.last.latest["train"], Recorder.last.latest["val"]
    assert train_outputs.logits is None  # O(N) per epoch for the training split
    assert len(train_outputs) == 240 and train_outputs.margin.shape == (240,)
    assert train_outputs.embedding.shape[0] == 240  # neighbours of hardest errors (under max_embeddings)
    assert val_outputs.logits.shape == (60, 10)
    expected = label_statistics(torch.from_numpy(val_outputs.logits), torch.from_numpy(val_outputs.target))
    np.testing.assert_allclose(val_outputs.margin, expected["margin"].numpy(), rtol=1e-5, atol=1e-5)


def test_collector_keeps_the_outputs_of_the_best_checkpoints_epoch(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=3", "+callbacks.recorder._target_=tests.helpers.Recorder"))
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    val = Recorder.last.best["val"]
    assert val is not None and val.epoch == best["epoch"]
    # The best checkpoint's validation accuracy is that epoch's, from the gathered outputs.
    assert float((val.pred == val.target).mean()) == pytest.approx(best["val_metrics"]["val/acc"], abs=1e-6)
