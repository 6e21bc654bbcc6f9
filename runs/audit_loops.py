"""The two plain no-grad loops the data audit needs a model for: the pretrained backbone's embeddings of
every image (``audit.mode=full``), and the accuracy with and without the leaked images set aside
(``audit.drop_leaked``). Both use the evaluation transform and run on one process; torch is imported
when they run, so ``audit.py`` in cheap mode never loads it for the audit itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import numpy as np

from runs.audit_step import LEAKED, progress_bar


def backbone_embeddings(paths: Sequence[str], *, model: Mapping, options: Mapping, progress: bool = True) -> np.ndarray:
    """Pooled features of the pretrained backbone ``model["name"]`` for every path, in a plain no-grad
    loop with the evaluation transform (``audit.mode=full``); rows of files that fail to load stay zero.

    Raises:
        WeightsError: the backbone's weights cannot be had (see ``models.backbones``).
    """
    import timm
    import torch
    from torch.utils.data import DataLoader

    from datamodules.dataset import ImageDataset, collate_skipping_failures
    from models.backbones import create_backbone
    from runs import build

    backbone = create_backbone(
        model["name"],
        num_classes=0,
        pretrained=bool(model.get("pretrained")),
        weights=model.get("weights"),
        cache_dir=model.get("cache_dir"),
    ).eval()
    prep = build.preprocessing(timm.data.resolve_model_data_config(backbone), dict(options))
    loader_options = build.loader_options(dict(options))
    dataset = ImageDataset(list(paths), [0] * len(paths), prep.eval_transform())
    loader = DataLoader(
        dataset,
        batch_size=loader_options.eval_batch_size or 2 * loader_options.batch_size,
        num_workers=loader_options.num_workers,
        collate_fn=collate_skipping_failures,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    out: np.ndarray | None = None
    with progress_bar("audit: embeddings", progress) as update, torch.inference_mode():
        done = 0
        for batch in loader:
            done += len(batch["index"]) + len(batch["failed"])
            if len(batch["index"]):
                features = backbone.forward_head(backbone.forward_features(batch["image"].to(device)), pre_logits=True)
                if out is None:
                    out = np.zeros((len(paths), features.shape[1]), np.float32)
                out[batch["index"].numpy()] = features.float().cpu().numpy()
            update(done, len(paths))
    return out if out is not None else np.zeros((len(paths), 1), np.float32)


def embedding_notes(model: Mapping) -> list[str]:
    """A note for ``audit.md`` when ``audit.mode=full`` embeds with random weights (``model=scratch``)."""
    if model.get("pretrained") or model.get("weights"):
        return []
    return [
        f"audit.mode=full with model.pretrained=false: the embeddings of {model.get('name')} come from random "
        "weights and link few near duplicates; give a pretrained backbone (model.pretrained=true or model.weights)"
    ]


def leakage_effect(model, datamodule, *, checkpoint: str | None, device, precision=None) -> dict[str, float]:
    """Accuracy on each evaluated split without and with its set-aside leaked images, and on those
    alone, with the weights of ``checkpoint`` (the run's best; None: the weights in memory).

    A plain no-grad loop with the evaluation transform on one process, after the run's own
    evaluation: it adds one pass over the validation and test images. ``precision``: the
    trainer's precision plugin, which casts each batch to the model's dtype (16-true, bf16-true).

    Returns:
        ``{"val/acc_without_leaked", "val/acc_with_leaked", "leaked_val/acc", and the same for test}``
        for each split that had images set aside.
    """
    import torch
    from torch.utils.data import DataLoader

    from datamodules.dataset import collate_skipping_failures
    from runs.checkpoints import load_file

    if checkpoint:
        model.load_state_dict(load_file(checkpoint)["state_dict"])
    model.to(device).eval()

    def correct(split: str) -> tuple[int, int]:
        loader = DataLoader(
            datamodule.dataset(split),
            batch_size=datamodule.loader.eval_batch_size or 2 * datamodule.loader.batch_size,
            num_workers=datamodule.loader.num_workers,
            collate_fn=collate_skipping_failures,
        )
        right = seen = 0
        with torch.inference_mode(), precision.forward_context() if precision is not None else nullcontext():
            for batch in loader:
                if len(batch["index"]):
                    images = batch["image"].to(device)
                    images = precision.convert_input(images) if precision is not None else images
                    predicted = model(images).argmax(dim=1).cpu()
                    right += int((predicted == batch["target"]).sum())
                    seen += len(batch["index"])
        return right, seen

    results: dict[str, float] = {}
    for split, aside in LEAKED.items():
        if aside not in datamodule.samples:
            continue
        honest, n_honest = correct(split) if split in datamodule.samples else (0, 0)
        leaked, n_leaked = correct(aside)
        if n_honest:
            results[f"{split}/acc_without_leaked"] = honest / n_honest
        results[f"{split}/acc_with_leaked"] = (honest + leaked) / max(1, n_honest + n_leaked)
        results[f"{aside}/acc"] = leaked / max(1, n_leaked)
    return results


def leakage_summary(effect: Mapping[str, float], set_aside: Mapping[str, int]) -> str:
    """One line for the end-of-run summary: how much the leaked images inflated each accuracy."""
    parts = []
    for split, aside in LEAKED.items():
        if f"{split}/acc_without_leaked" in effect:
            without, with_ = effect[f"{split}/acc_without_leaked"], effect[f"{split}/acc_with_leaked"]
            parts.append(
                f"{split}/acc {without:.4f} without the {set_aside.get(aside, 0)} leaked images, {with_:.4f} with "
                f"them ({with_ - without:+.4f})"
            )
    return "; ".join(parts)
