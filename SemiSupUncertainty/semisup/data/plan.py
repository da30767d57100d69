"""Rules that turn a dataset fingerprint into a run configuration (``semisup plan``).

Every rule names the measurement or the paper behind it; the rules and their
figures are listed in docs/benchmarks.md ("Planning rules"). The result is an
ordinary :class:`~semisup.config.RunConfig`, written as editable YAML with the
reasons as comments; nothing in it is hidden from the user.

Two budgets are planned for: a **CPU** (the settings of the benchmarks' ``cpu``
setting, whose speed and accuracy were measured on LA2018 and ACDC) and a **GPU**
(the papers' settings; not measured here, no GPU was available).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import NETWORK_DIVISORS, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from .fingerprint import Fingerprint

__all__ = ["Plan", "plan_from_fingerprint", "plan_yaml", "RATES_IT_PER_S"]

#: A 3-D network needs this many voxels along every axis (four 2x downsamplings, V-Net);
#: a dataset whose median size along an axis is below twice that is trained slice-wise.
MIN_3D_AXIS = 2 * NETWORK_DIVISORS["vnet"]
#: nnU-Net's anisotropy threshold: spacing ratio above which 3-D patches are not isotropic
#: in mm any more (Isensee et al. 2021, "3d_lowres"/anisotropic rules).
ANISOTROPY_2D = 3.0
#: Measured iterations per second on one CPU thread at the benchmarks' cpu settings
#: (docs/benchmarks.md: LA2018 3-D 48x48x32, V-Net 8 filters, batch 2+2; ACDC 2-D 96x96,
#: U-Net 16 filters, batch 4+4, from the train minutes of 400 iterations).
RATES_IT_PER_S: dict[tuple[int, str], float] = {
    (3, "supervised"): 5.2,
    (3, "uamt"): 1.5,
    (3, "ucmt"): 0.72,
    (2, "supervised"): 400 / (1.6 * 60),
    (2, "uamt"): 400 / (10.2 * 60),
    (2, "ucmt"): 400 / (11.1 * 60),
}
#: Paper budgets: UA-MT 6000 iterations (3-D LA), SSL4MIS 30000 (2-D ACDC), UCMT 20000.
PAPER_ITERATIONS = {3: 6000, 2: 30000}
UCMT_PAPER_ITERATIONS = 20000
#: Below this many iterations no method separated from supervised-only on LA2018
#: (800 iterations, docs/benchmarks.md) while UCMT's shared recipe did at 2000 (LA) and
#: at 400 on ACDC 2-D: the 3-D floor for a semi-supervised recipe.
MIN_SEMI_ITERATIONS = {3: 2000, 2: 400}
#: Share of the volume under which patches are centred on the class a third of the time
#: (LA2018 cpu setting used 0.33 with the atrium at ~7 % of the cropped volumes, as
#: measured by the fingerprint; nnU-Net oversamples foreground in 33 % of its patches).
SMALL_FOREGROUND = 0.10
#: Training time planned for on a CPU when none is given: UCMT's shared recipe needs
#: ~46 min for its 2000 LA2018 iterations on one thread (docs/benchmarks.md).
DEFAULT_CPU_MINUTES = 60.0
FOREGROUND_OVERSAMPLE = 0.33


@dataclass
class Plan:
    """A planned configuration and, per setting, why."""

    config: RunConfig
    reasons: dict[str, str] = field(default_factory=dict)
    budget: str = "cpu"


def _round_patch(values: list[float], divisor: int, cap: list[int]) -> list[int]:
    """Largest multiple of ``divisor`` not above the value (at least ``divisor``), capped."""
    return [int(max(divisor, min(c, math.floor(v / divisor) * divisor))) for v, c in zip(values, cap)]


def _iterations(minutes: float, dims: int, method: str) -> int:
    """Iterations that fit ``minutes`` at the measured rate, in hundreds, within [100, paper budget]."""
    fit = int(minutes * 60 * RATES_IT_PER_S[(dims, method)]) // 100 * 100
    return int(min(PAPER_ITERATIONS[dims], max(100, fit)))


def plan_from_fingerprint(fp: Fingerprint, budget_minutes: float | None = None, device: str | None = None) -> Plan:
    """The run configuration for ``fp``.

    Parameters
    ----------
    fp:
        :func:`~semisup.data.fingerprint.dataset_fingerprint` of the dataset.
    budget_minutes:
        Training time to plan for. ``None``: the paper budget on a GPU, ``DEFAULT_CPU_MINUTES``
        (60) on a CPU.
    device:
        ``"cpu"`` or ``"gpu"``; default from ``fp.device``.
    """
    gpu = (device or ("gpu" if fp.device.startswith("cuda") else "cpu")) == "gpu"
    reasons: dict[str, str] = {}
    dims = 3
    if min(fp.size_median) < MIN_3D_AXIS or fp.anisotropy > ANISOTROPY_2D:
        dims = 2
        reasons["data.spatial_dims"] = (
            f"2 (slice-wise along z): median size {fp.size_median} has an axis under {MIN_3D_AXIS} voxels or "
            f"spacing anisotropy {fp.anisotropy:.1f} > {ANISOTROPY_2D} (nnU-Net); ACDC is trained 2-D (SSL4MIS)"
        )
    else:
        reasons["data.spatial_dims"] = f"3: every median axis >= {MIN_3D_AXIS} voxels, anisotropy {fp.anisotropy:.1f}"

    # Spacing: native on a GPU (papers), 2x coarser in-plane on a CPU (benchmarks' cpu settings).
    factor = 1.0 if gpu else 2.0
    spacing = [s * factor for s in fp.spacing_median]
    if dims == 2:
        spacing[2] = fp.spacing_median[2]
    target = None if factor == 1.0 else [round(v, 4) for v in spacing]
    reasons["data.target_spacing"] = (
        "native grid (papers' setting)" if target is None else
        f"2x the median spacing in-plane {target}: LA2018 cpu setting (1.25 mm from 0.625) ran UA-MT 2000 iterations "
        f"in 22 min on one thread; ACDC cpu setting halves each slice"
    )
    size_at = [n * s / t for n, s, t in zip(fp.size_median, fp.spacing_median, spacing)]
    if dims == 3:
        cap = [112, 112, 80] if gpu else [48, 48, 32]
        patch = _round_patch(size_at, NETWORK_DIVISORS["vnet"], cap)
        net = NetworkConfig(name="vnet", base_filters=16 if gpu else 8, dropout=True)
        reasons["data.patch_size"] = (
            f"{patch}: the {'UA-MT paper' if gpu else 'LA2018 cpu setting'}'s {cap}, no larger than the median "
            f"volume at the target spacing ({[round(v) for v in size_at]}), multiples of 16"
        )
        reasons["network"] = f"V-Net (UA-MT's backbone), {net.base_filters} filters ({'paper' if gpu else 'cpu setting'}), dropout on for MC uncertainty"
        lab_b, unl_b = 2, 2
        reasons["train.batch"] = "2 labeled + 2 unlabeled (UA-MT paper, LA2018)"
    else:
        cap = [256, 256] if gpu else [96, 96]
        patch = _round_patch(size_at[:2], NETWORK_DIVISORS["unet2d"], cap)
        net = NetworkConfig(name="unet2d", base_filters=16, dropout=True)
        reasons["data.patch_size"] = f"{patch}: {'SSL4MIS' if gpu else 'ACDC cpu setting'} {cap}, no larger than the median slice"
        reasons["network"] = "SSL4MIS 2-D U-Net, 16 filters, dropout on"
        lab_b, unl_b = (12, 12) if gpu else (4, 4)
        reasons["train.batch"] = f"{lab_b} + {unl_b} ({'SSL4MIS' if gpu else 'ACDC cpu setting'})"

    # Method: UCMT with SGD + EMA 0.99 beat UA-MT and supervised-only at short budgets: LA2018,
    # 2000 iterations, 5-fold cross-validation, 83.5 vs 81.4 vs 80.9 over 80 unseen cases
    # (docs/benchmarks.md); ACDC 400 iterations, 3 seeds, single split: 57.4 vs 53.6 vs 51.5.
    # Its paper recipe (AdamW 1e-4, EMA 0.999) lost at 2000 iterations (single split).
    minutes = budget_minutes if budget_minutes is not None else (None if gpu else DEFAULT_CPU_MINUTES)
    params: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if fp.unlabeled == 0:
        method = "supervised"
        reasons["method"] = "supervised: the dataset has no unlabeled cases"
    else:
        method = "ucmt"
    if minutes is None:
        iterations = UCMT_PAPER_ITERATIONS if method == "ucmt" else PAPER_ITERATIONS[dims]
        reasons["train.iterations"] = f"{iterations}: the paper budget (GPU; no GPU rate was measured here)"
    else:
        iterations = _iterations(minutes, dims, method)
        if method == "ucmt" and iterations < MIN_SEMI_ITERATIONS[dims]:
            method = "supervised"
            iterations = _iterations(minutes, dims, method)
            reasons["method"] = (
                f"supervised: fewer than {MIN_SEMI_ITERATIONS[dims]} UCMT iterations fit the budget, below which no "
                f"semi-supervised method separated from supervised-only (LA2018, 800 iterations)"
            )
        rate = RATES_IT_PER_S[(dims, method)]
        reasons["train.iterations"] = (
            f"{iterations}: {minutes:g} min x {rate:.2f} it/s, the measured one-thread CPU rate of {method} at the "
            f"cpu setting (docs/benchmarks.md), at most the paper's {PAPER_ITERATIONS[dims]}; scale with --budget-minutes"
        )
    if method == "ucmt":
        if iterations >= UCMT_PAPER_ITERATIONS:
            params = {"ema_alpha": 0.999}
            train = {"optimizer": "adamw", "lr": 1e-4, "lr_schedule": "constant", "weight_decay": 0.01}
            reasons["method"] = "ucmt, paper recipe (AdamW 1e-4 constant, EMA 0.999) at its 20000-iteration budget"
        else:
            params = {"ema_alpha": 0.99}
            reasons["method"] = (
                "ucmt with SGD + EMA 0.99 (the shared recipe): best on LA2018 (5-fold cross-validation, 2000 iterations: "
                "83.6 Dice vs UA-MT 81.4, supervised 80.9, better than supervised on 56 of 80 unseen cases) and ACDC "
                "(5-fold cross-validation by patient, 2000 iterations: 76.6 vs UA-MT 73.4, supervised 72.9, "
                "better on 119 of 160 volumes); the paper "
                "recipe (AdamW 1e-4, EMA 0.999) lost (74.5) at this budget"
            )
    if dims == 3:
        # The LA2018 benchmark's UCMT scaling: "epochs" of iterations / 40 (50 at 2000).
        params["iterations_per_epoch"] = max(1, iterations // 40) if method == "ucmt" else None
        train.setdefault("lr_schedule", "step")
        train.setdefault("lr_step", max(1, round(iterations * 2500 / 6000)))
        reasons["train.schedule"] = "SGD 0.01, x0.1 at 5/12 of the run (UA-MT: 2500 of 6000)"
    else:
        if method == "ucmt":  # the ACDC benchmark's scaling of UCMT's code: lambda ramp over 1/60 of the run
            params["iterations_per_epoch"] = max(1, iterations // 300)
            params["rampup_epochs"] = iterations / 60 / params["iterations_per_epoch"]
        train.setdefault("lr_schedule", "poly")
        reasons["train.schedule"] = "SGD 0.01, poly (SSL4MIS)"
    params = {k: v for k, v in params.items() if v is not None}

    fractions = [v["median_fraction"] for v in fp.class_sizes.values()]
    oversample = FOREGROUND_OVERSAMPLE if fractions and min(fractions) < SMALL_FOREGROUND else 0.0
    reasons["data.foreground_oversample"] = (
        f"{oversample}: smallest class median share {min(fractions) if fractions else float('nan'):.3f} "
        f"{'<' if oversample else '>='} {SMALL_FOREGROUND} (LA2018 cpu setting, nnU-Net: a third of the patches on foreground)"
    )
    reasons["data.modality"] = f"{fp.modality}: dataset.json modality / intensity range"
    mc = 8 if gpu else 4
    reasons["inference"] = (
        f"T = {mc} MC samples ({'UA-MT paper' if gpu else 'cpu setting'}); Gaussian blending with dropout masks shared "
        "by all windows (no tile seams, docs/benchmarks.md 'Tile seams'); largest component 'auto' (per class, as "
        "it helped on the run's validation cases)"
    )
    cfg = RunConfig(
        data=DataConfig(
            dataset=str(Path(fp.dataset).resolve()),
            modality=fp.modality,
            spatial_dims=dims,
            patch_size=patch,
            target_spacing=target,
            foreground_oversample=oversample,
        ),
        network=net,
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(iterations=iterations, labeled_batch=lab_b, unlabeled_batch=unl_b, **train),
        inference=InferenceConfig(
            mc_samples=mc, overlap=0.5, blend_mode="gaussian", shared_masks=True, largest_component="auto"
        ),
    )
    cfg.validate("plan")
    return Plan(cfg, reasons, "gpu" if gpu else "cpu")


def plan_yaml(plan: Plan, fingerprint: Fingerprint | None = None) -> str:
    """The plan as editable YAML, each rule's reason as a comment at the top."""
    lines = ["# Planned by `semisup plan` (rules: docs/benchmarks.md, 'Planning rules'). Edit freely.",
             f"# Budget: {plan.budget}."]
    if fingerprint is not None:
        lines.append(
            f"# Data: {fingerprint.labeled} labeled, {fingerprint.unlabeled} unlabeled, median spacing "
            f"{[round(v, 3) for v in fingerprint.spacing_median]}, median size {fingerprint.size_median}."
        )
    lines += [f"# {key}: {why}" for key, why in plan.reasons.items()]
    return "\n".join(lines) + "\n" + yaml.safe_dump(plan.config.to_dict(), sort_keys=False)
