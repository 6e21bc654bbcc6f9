"""How suspect each label is: per-sample training dynamics over the epochs of one run, and confident
learning (cleanlab) on out-of-sample probabilities.

Training dynamics come from the training forward passes the run makes anyway, so finding
suspects costs no extra pass over the data:

* Area Under the Margin (Pleiss et al. 2020): the mean over epochs of the given label's
  logit minus the largest other logit. Mislabelled samples keep a negative margin, because
  their look-alikes pull the model towards the true class.
* Dataset Cartography (Swayamdipta et al. 2020): confidence = mean probability of the
  given label over epochs; variability = its standard deviation. Low confidence with low
  variability ("hard to learn") is where mislabelled samples sit.
* Forgetting events (Toneva et al. 2019): how often a sample went from correctly to
  incorrectly classified between two consecutive epochs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

STATE_KEYS = ("seen", "margin_sum", "prob_sum", "prob_sq_sum", "last_correct", "forgetting", "other_class")


class TrainingDynamics:
    """Running per-sample statistics over epochs; memory O(number of samples).

    Args:
        num_samples: size of the training split (samples are addressed by index).
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.seen = np.zeros(num_samples, np.int64)
        self.margin_sum = np.zeros(num_samples, np.float64)
        self.prob_sum = np.zeros(num_samples, np.float64)
        self.prob_sq_sum = np.zeros(num_samples, np.float64)
        self.last_correct = np.full(num_samples, -1, np.int8)  # -1: not seen yet
        self.forgetting = np.zeros(num_samples, np.int64)
        self.other_class = np.full(num_samples, -1, np.int64)  # strongest other class, last epoch

    def update(self, index: np.ndarray, margin: np.ndarray, p_given: np.ndarray, other_class: np.ndarray) -> None:
        """Adds one epoch of the samples ``index`` (each at most once).

        Args:
            index: sample indices.
            margin: logit of the given label minus the largest other logit.
            p_given: softmax probability of the given label.
            other_class: class of the largest other logit.
        """
        correct = (margin > 0).astype(np.int8)
        self.seen[index] += 1
        self.margin_sum[index] += margin
        self.prob_sum[index] += p_given
        self.prob_sq_sum[index] += p_given**2
        self.forgetting[index] += (self.last_correct[index] == 1) & (correct == 0)
        self.last_correct[index] = correct
        self.other_class[index] = other_class

    def scores(self) -> dict[str, np.ndarray]:
        """Per-sample AUM, confidence, variability, forgetting events and the combined score.

        ``score`` in [0, 1], higher = more suspect: ``0.5 * [wrong at the last epoch] +
        0.5 * (1 - confidence)``. NaN for samples never seen.
        """
        seen = np.maximum(self.seen, 1)
        aum = np.where(self.seen > 0, self.margin_sum / seen, np.nan)
        confidence = np.where(self.seen > 0, self.prob_sum / seen, np.nan)
        variance = np.maximum(self.prob_sq_sum / seen - (self.prob_sum / seen) ** 2, 0.0)
        variability = np.where(self.seen > 0, np.sqrt(variance), np.nan)
        # Samples the model still contradicts at the last epoch first (0.5 + ...), then by how
        # little probability the given label got on average. Chosen over AUM and over a rank
        # blend of AUM and confidence on injected noise; see BENCHMARKS.md for the comparison.
        score = 0.5 * (self.last_correct == 0) + 0.5 * (1.0 - confidence)
        return {
            "aum": aum,
            "confidence": confidence,
            "variability": variability,
            "forgetting": self.forgetting.copy(),
            "score": score,
        }

    def flagged(self, max_margin: float, min_epochs: int) -> np.ndarray:
        """Samples seen at least ``min_epochs`` times whose AUM is below ``max_margin`` and whose
        given label the model still contradicts at the last epoch (a sample it got right by the
        end, after a slow start, is hard, not necessarily mislabelled)."""
        aum = np.where(self.seen > 0, self.margin_sum / np.maximum(self.seen, 1), np.inf)
        return (self.seen >= min_epochs) & (aum < max_margin) & (self.last_correct == 0)

    def state_dict(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, **{k: torch.from_numpy(getattr(self, k).copy()) for k in STATE_KEYS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_samples") != self.num_samples:
            raise ValueError(
                f"checkpoint tracked {state.get('num_samples')} training samples, this data has {self.num_samples}: "
                "resume with the same data (and the same data.exclude / data.relabel / data.label_noise)."
            )
        for key in STATE_KEYS:
            if key in state:
                setattr(self, key, state[key].numpy().astype(getattr(self, key).dtype))


def confident_learning(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's confident learning on out-of-sample probabilities: (flagged, label quality in [0, 1]).

    ``find_label_issues(filter_by="prune_by_noise_rate")`` for the flagged set and
    ``get_label_quality_scores`` (self-confidence) for the ranking; used for the validation split
    here and for K-fold probabilities by ``crossval_label_issues.py``.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    return find_label_issues(labels, probs, filter_by="prune_by_noise_rate"), get_label_quality_scores(labels, probs)
