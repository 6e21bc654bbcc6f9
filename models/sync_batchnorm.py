"""Synchronised BatchNorm for DDP that keeps timm's fused norm + activation layers whole.

Lightning's ``Trainer(sync_batchnorm=True)`` converts the model with torch's
``SyncBatchNorm.convert_sync_batchnorm``, which knows only torch's own layers. timm's
``BatchNormAct2d`` (normalisation, dropout and activation in one module, used by EfficientNet,
MobileNet, RegNet, ...) becomes a plain ``SyncBatchNorm``: its activation stays behind as an
unused child, so every multi-GPU run silently trains a different network (EfficientNet-Lite0
loses all 33 of its ReLU6s). timm's ``convert_sync_batchnorm`` turns it into
``SyncBatchNormAct`` instead, which normalises over the global batch and then applies the
same dropout and activation.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins import LayerSync
from timm.layers import BatchNormAct2d, SyncBatchNormAct, convert_sync_batchnorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Forwards that are pure batch normalisation (+ dropout and activation, for timm's fused layers),
# which a synchronised layer computes the same way. A BatchNorm subclass with any other forward
# (timm's SplitBatchNorm2d, a user's own) would lose what it adds on conversion, as
# BatchNormAct2d does under torch's converter.
_CONVERTIBLE_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward, BatchNormAct2d.forward, SyncBatchNormAct.forward)


class TimmSyncBatchNorm(LayerSync):
    """Synchronises the BatchNorm statistics of a model across DDP processes, with timm's converter.

    Every ``BatchNorm*d`` becomes a ``torch.nn.SyncBatchNorm`` and every timm ``BatchNormAct2d``
    a ``timm.layers.SyncBatchNormAct`` with its dropout and activation; parameters and running
    statistics are shared, not copied. Lightning applies the plugin when fitting starts and
    reverts it when fitting ends; :meth:`revert` gives back the very layers :meth:`apply`
    replaced (their classes and attributes), holding the trained parameters and statistics.

    torch's ``SyncBatchNorm`` trains on GPUs only: under a CPU (gloo) process group its forward
    in training mode raises ``ValueError``. In evaluation mode it normalises with the running
    statistics, as ``BatchNorm2d`` does, on any device.

    Args:
        process_group: synchronise within this process group instead of all processes.

    Raises:
        ValueError: (from :meth:`apply`) a BatchNorm layer computes more than a normalisation
            (a forward of its own that conversion would drop).

    Example::

        Trainer(strategy="ddp", accelerator="gpu", devices=4, plugins=[TimmSyncBatchNorm()])

    Do not also set ``Trainer(sync_batchnorm=True)``: Lightning refuses a layer-sync plugin
    together with it.
    """

    def __init__(self, process_group: torch.distributed.ProcessGroup | None = None) -> None:
        self.process_group = process_group
        self._replaced: dict[str, _BatchNorm] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        """Converts every BatchNorm layer of ``model`` to its synchronised variant."""
        layers = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
        for name, layer in layers.items():
            if type(layer).forward not in _CONVERTIBLE_FORWARDS:
                raise ValueError(
                    f"Cannot synchronise BatchNorm layer {name or 'model'} ({type(layer).__qualname__}): it has a "
                    "forward of its own, which the synchronised layer would not run. Train it without synchronised "
                    "BatchNorm (trainer.plugins=[] with trainer=ddp), or with a backbone without such layers."
                )
        # The originals are kept (a few small vectors each) so that revert gives back the same
        # objects: a SyncBatchNorm does not say which BatchNorm class it was.
        self._replaced = {name: layer for name, layer in layers.items() if not isinstance(layer, nn.SyncBatchNorm)}
        converted = convert_sync_batchnorm(model, self.process_group)
        for name, layer in layers.items():
            if name not in self._replaced:
                # Already synchronised: timm's converter would turn a SyncBatchNormAct into a
                # plain SyncBatchNorm (dropping its activation), so it stays as it was.
                converted = _put(converted, name, layer)
        return converted

    def revert(self, model: nn.Module) -> nn.Module:
        """Puts back the layers the last :meth:`apply` replaced, with the current parameters and statistics."""
        for name, synced in list(model.named_modules()):
            original = self._replaced.get(name)
            if original is None or not isinstance(synced, nn.SyncBatchNorm):
                continue
            # The synchronised layer holds what training changed, where the strategy moved it
            # (device, dtype): hand its tensors and children (dropout, activation) back.
            for key, param in synced.named_parameters(recurse=False):
                setattr(original, key, param)
            for key, buffer in synced.named_buffers(recurse=False):
                setattr(original, key, buffer)
            for key, child in synced.named_children():
                setattr(original, key, child)
            original.training = synced.training
            model = _put(model, name, original)
        self._replaced = {}
        return model


def _put(model: nn.Module, name: str, layer: nn.Module) -> nn.Module:
    """``model`` with its submodule ``name`` set to ``layer`` (``layer`` itself for the empty name)."""
    if not name:
        return layer
    model.set_submodule(name, layer)
    return model
