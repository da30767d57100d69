"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks").

One scalar ``T > 0`` divides the logits before the softmax: ``softmax(z / T)``. It
keeps the argmax (the label map does not change) and is fitted by minimising the
negative log-likelihood of held-out voxels.

Fitting works on log-probabilities ``log p = z - logsumexp(z)``: the per-voxel
constant cancels in the softmax, so ``softmax(log p / T) == softmax(z / T)`` exactly.
Probabilities of a sliding-window prediction are blended between windows; their log
is then close to, not exactly, a shift of the logits (stated in calibration.json).

With MC dropout the prediction is the mean over ``S`` dropout draws of
``softmax(z_s / T)`` (:class:`TemperatureScaled` scales every draw), so the NLL is
fitted on that mean: log-probabilities of shape ``(S, N, C)``, one slice per draw.
A temperature fitted on a single deterministic pass does not transfer to the MC mean,
which is already softer (measured on LA2018, docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from scipy import optimize

from ..networks.base import mc_dropout

__all__ = [
    "TemperatureScaled", "StochasticPass", "LOG_PROB_FLOOR", "TEMPERATURE_BOUNDS", "nll", "softmax_t", "fit_temperature",
]

#: Probabilities are floored here before the log (float32 softmax underflows to 0).
LOG_PROB_FLOOR: float = 1e-30
#: Search interval of T; beyond it the model is broken, not miscalibrated.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


class TemperatureScaled(nn.Module):
    """``net`` with its logits divided by ``temperature`` (also in ``mc_forward``).

    Dropout layers stay those of ``net``, so MC dropout samples each scaled draw.
    """

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        self.net = net
        self.temperature = float(temperature)
        self.supports_feature_reuse = bool(getattr(net, "supports_feature_reuse", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature

    def mc_forward(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        return self.net.mc_forward(x, samples) / self.temperature


class StochasticPass(nn.Module):
    """``net`` with dropout active in every forward pass: one MC-dropout draw per call.

    Lets the deterministic sliding-window path return single draws (the predictor
    itself only returns their mean).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with mc_dropout(self.net):
            return self.net(x)


def _samples(log_prob: np.ndarray) -> np.ndarray:
    lp = np.asarray(log_prob, dtype=np.float64)
    return lp[None] if lp.ndim == 2 else lp


def softmax_t(log_prob: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log_prob / T)`` over the class axis, averaged over draws for ``(S, N, C)`` input; ``(N, C)``."""
    z = _samples(log_prob) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).mean(axis=0)


def nll(log_prob: np.ndarray, target: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``target`` (N,) under ``mean_s softmax(log_prob_s / T)``.

    ``log_prob`` is ``(N, C)`` (one pass) or ``(S, N, C)`` (``S`` dropout draws).
    """
    y = np.asarray(target, dtype=np.int64)
    z = _samples(log_prob) / temperature
    m = z.max(axis=-1, keepdims=True)
    log_softmax = z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))  # (S, N, C)
    picked = log_softmax[:, np.arange(y.size), y]  # (S, N)
    # log of the mean over draws, stably: logsumexp over S minus log S
    top = picked.max(axis=0)
    log_mean = top + np.log(np.exp(picked - top).mean(axis=0))
    return float(-np.mean(log_mean))


def fit_temperature(
    log_prob: np.ndarray, target: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The ``T`` minimising :func:`nll` (bounded scalar search on ``log T``)."""
    lp = _samples(log_prob)
    y = np.asarray(target, dtype=np.int64)
    if lp.ndim != 3 or lp.shape[1] != y.shape[0] or lp.shape[1] == 0:
        raise ValueError(f"expected (N, C) or (S, N, C) log-probabilities and (N,) targets, got {lp.shape} and {y.shape}")
    res = optimize.minimize_scalar(
        lambda log_t: nll(lp, y, math.exp(log_t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))
