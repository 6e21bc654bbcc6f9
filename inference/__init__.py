"""Using a trained model: output filtering, per-class thresholds, unfamiliar-input flags,
"label these next", streaming images through a model, and ONNX / TorchScript export.

Each module is a pure core over numpy arrays, plain paths and dataclasses: no Trainer, no
config tree, so ``predict.py``, ``export.py`` and the end of training can all call it.
"""
