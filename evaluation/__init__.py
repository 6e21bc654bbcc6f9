"""Evaluation beyond clean accuracy: robustness to corruptions, per-slice metrics and shortcuts,
calibration, and where the model looks. Pure functions over arrays and DataFrames; the
callbacks and ``eval.py`` feed them and log what they return."""
