"""UA-MT: uncertainty-aware mean teacher (Yu et al., MICCAI 2019; 002_65a16179719aeb2d).

Also provides the plain mean teacher (UA-MT without the uncertainty mask).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ConfigError
from ..inference.uncertainty import predictive_entropy
from .base import Method, NetworkFactory, StepOutput
from .ema import init_teacher, update_ema
from .losses import masked_mse, supervised_loss
from .ramps import consistency_weight, ema_decay, sigmoid_rampup

__all__ = [
    "UAMT",
    "MeanTeacher",
    "UAMTParams",
    "MeanTeacherParams",
    "uncertainty_threshold",
    "add_clamped_noise",
    "teacher_copies_per_pass",
]


@dataclass
class UAMTParams:
    """Constants of UA-MT, each with its source."""

    # EMA decay ceiling alpha (UA-MT code --ema_decay 0.99).
    ema_alpha: float = 0.99
    # Max consistency weight and ramp (UA-MT code: 0.1, 40 "epochs" of 150 iterations).
    consistency: float = 0.1
    consistency_rampup: float = 40.0
    iterations_per_epoch: int = 150
    # Teacher input noise: N(0, noise_std) clamped to +-noise_clip (UA-MT code).
    noise_std: float = 0.1
    noise_clip: float = 0.2
    # T stochastic teacher passes for the uncertainty (paper and code: T = 8).
    mc_samples: int = 8
    # Threshold H(t) = (start + (1 - start) * ramp(t, max_iter)) * u_max (paper: 0.75).
    threshold_start: float = 0.75
    # u_max: "ln2" as in the paper and both reference codes, "lnC" = ln(classes),
    # the entropy's true maximum, the consistent choice for multi-class problems.
    u_max: str = "lnC"
    # Paper's "UA-MT" also applies the consistency to labeled images; the authors'
    # code (UA-MT-UN) uses unlabeled images only.
    consistency_on_labeled: bool = True
    # Mean-teacher variant of SSL4MIS 2D: no consistency before this iteration.
    consistency_start: int = 0
    # BatchNorm buffers of the teacher: "average" (EMA, default) or "own" (reference code).
    ema_buffers: str = "average"
    # Copies of the consistency batch per teacher forward (of the 1 + T noisy copies).
    # None follows the device: all in one forward on CUDA (fewer, larger kernels), one
    # copy per forward on the CPU, where activations of a small batch stay in cache
    # (measured 1.6x faster teacher passes at 64 x 64 x 32, docs/benchmarks.md). Each
    # forward is its own BatchNorm batch, as each of the UA-MT code's teacher passes.
    teacher_copies_per_pass: int | None = None


@dataclass
class MeanTeacherParams(UAMTParams):
    """Mean teacher: UA-MT's constants without the uncertainty mask."""


def add_clamped_noise(x: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """``x + clamp(N(0, std), -clip, clip)`` (UA-MT teacher perturbation)."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


def teacher_copies_per_pass(setting: int | None, samples: int, device: torch.device) -> int:
    """Copies per teacher forward: ``setting``, or all ``samples`` on CUDA and 1 elsewhere."""
    if setting is None:
        return samples if device.type == "cuda" else 1
    if setting < 1:
        raise ValueError(f"teacher_copies_per_pass must be >= 1 or None, got {setting}")
    return min(int(setting), samples)


def uncertainty_threshold(step: int, max_steps: int, num_classes: int, start: float, u_max: str) -> float:
    """``H(t) = (start + (1 - start) * ramp(t, max_steps)) * u_max`` (UA-MT eq. 3 and code)."""
    if u_max == "ln2":
        top = math.log(2.0)
    elif u_max == "lnC":
        top = math.log(num_classes)
    else:
        raise ValueError(f"u_max must be 'ln2' or 'lnC', got {u_max!r}")
    return (start + (1.0 - start) * sigmoid_rampup(step, max_steps)) * top


class UAMT(Method):
    """Student + EMA teacher; consistency masked to voxels the teacher is sure of."""

    name = "uamt"
    supports_sparse_labels = True  # labels enter through supervised_loss only
    Params = UAMTParams
    use_uncertainty_mask = True

    def __init__(self, network_factory: NetworkFactory, num_classes: int, params: UAMTParams) -> None:
        super().__init__(network_factory, num_classes, params)
        if self.use_uncertainty_mask and params.mc_samples < 1:
            # T = 0 would leave no teacher passes to measure the uncertainty with.
            raise ConfigError(f"{self.name}: method.params.mc_samples must be >= 1 (teacher passes T), got {params.mc_samples}")
        if params.iterations_per_epoch < 1:
            raise ConfigError(f"{self.name}: method.params.iterations_per_epoch must be >= 1, got {params.iterations_per_epoch}")
        self.student = network_factory()
        # Teacher starts as a copy; ema_decay(0) = 0 makes it equal the student after step 0 anyway.
        self.teacher = init_teacher(copy.deepcopy(self.student))

    def teacher_predictions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher softmax on one noisy copy of ``x`` and, for UA-MT, the entropy of T more.

        All ``1 + T`` stochastic passes run as one batched forward (fresh noise and
        dropout per copy) instead of the reference code's Python loop.
        """
        p = self.params
        samples = 1 + (p.mc_samples if self.use_uncertainty_mask else 0)
        b = x.shape[0]
        stacked = add_clamped_noise(x.repeat(samples, *([1] * (x.ndim - 1))), p.noise_std, p.noise_clip)
        copies = teacher_copies_per_pass(p.teacher_copies_per_pass, samples, x.device)
        with torch.no_grad():
            logits = [self.teacher(chunk) for chunk in stacked.split(copies * b)]
            probs = torch.softmax(torch.cat(logits).float() if len(logits) > 1 else logits[0].float(), dim=1)
        target = probs[:b]
        if not self.use_uncertainty_mask:
            return target, None
        mc = probs[b:].reshape(p.mc_samples, b, *probs.shape[1:])
        return target, predictive_entropy(mc.mean(dim=0))

    def training_step(self, labeled, unlabeled, step, max_steps) -> StepOutput:
        p = self.params
        x_l, y_l = labeled["image"], labeled["label"]
        x_u = unlabeled["image"] if unlabeled is not None else x_l[:0]
        b_l = x_l.shape[0]
        logits = self.student(torch.cat([x_l, x_u]))
        sup = supervised_loss(logits[:b_l], y_l)

        cons_slice = slice(0, None) if p.consistency_on_labeled else slice(b_l, None)
        x_c = torch.cat([x_l, x_u])[cons_slice]
        weight = consistency_weight(step, p.consistency, p.consistency_rampup, p.iterations_per_epoch)
        if step < p.consistency_start or x_c.shape[0] == 0:
            weight = 0.0
        logs = {"sup": sup.detach()}
        if weight == 0.0:
            return StepOutput(sup, logs)

        target, uncertainty = self.teacher_predictions(x_c)
        p_student = torch.softmax(logits[cons_slice].float(), dim=1)
        mask = None
        if uncertainty is not None:
            threshold = uncertainty_threshold(step, max_steps, self.num_classes, p.threshold_start, p.u_max)
            mask = (uncertainty < threshold).float()
            logs["mask_ratio"] = mask.mean().detach()
            logs["uncertainty"] = uncertainty.mean().detach()
        cons = masked_mse(p_student, target, mask)
        logs["consistency"] = cons.detach()
        logs["consistency_weight"] = torch.tensor(weight)
        return StepOutput(sup + weight * cons, logs)

    def after_optimizer_step(self, step: int) -> None:
        update_ema(self.teacher, [self.student], ema_decay(step, self.params.ema_alpha), buffers=self.params.ema_buffers)

    def inference_networks(self) -> list[nn.Module]:
        # UA-MT tests the student (paper, section 3).
        return [self.student]


class MeanTeacher(UAMT):
    """Mean teacher (Tarvainen & Valpola): UA-MT without the uncertainty mask."""

    name = "mean_teacher"
    Params = MeanTeacherParams
    use_uncertainty_mask = False
