"""Fit a run's temperature scaling and store it beside its checkpoints (``calibration.json``).

Held-out voxels come from the run's validation cases. Without a validation list the
labeled cases are *cross-fitted*: they are split into ``folds`` groups, a model with
the run's settings is trained on the other groups (in ``<run>/calibration/fold_<k>``)
and predicts the held-out group; one temperature is fitted on all held-out voxels.
Voxels are those of the evaluation region of ``semisup evaluate`` (foreground of
prediction or reference dilated by ``margin_mm``), at most ``max_voxels_per_case``
per case (a seeded random subset), predicted as ``semisup predict`` does: the mean of
``mc_samples`` dropout draws (the run's ``inference.mc_samples``), each draw kept so
that the temperature is fitted on the mean of the scaled draws (each draw here is one
sliding-window pass with its own seed; ``predict`` may share the masks across windows,
a difference of which draws, not of how many)
(:mod:`semisup.inference.calibration`); one deterministic pass for networks without dropout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import RunConfig, save_config
from ..data import DataError, DatasetSpec, load_validation_cases
from ..inference.calibration import LOG_PROB_FLOOR, StochasticPass, fit_temperature, nll, softmax_t
from ..inference.predictor import count_samples
from ..measure.uncertainty_quality import DEFAULT_MARGIN_MM, ECE_BINS, evaluation_region, expected_calibration_error
from .predict import CALIBRATION_FILE, load_trained, predict_array, resolve_checkpoint

__all__ = ["calibrate_run", "MAX_VOXELS_PER_CASE", "SUBSAMPLE_SEED"]

log = logging.getLogger(__name__)

#: Enough voxels per case for one scalar, few enough for seconds of CPU.
MAX_VOXELS_PER_CASE: int = 200_000
#: Seed of the voxel subsample (reproducible calibration files).
SUBSAMPLE_SEED: int = 0


def _held_out_voxels(model, cases, margin_mm: float, max_voxels: int, rng: np.random.Generator, mc_samples: int):
    """Log-probabilities ``(S, N, C)`` of ``S`` dropout draws (1 without dropout) and targets ``(N,)``."""
    cfg = model.cfg
    device = next(model.method.parameters()).device
    nets = model.networks
    draws = mc_samples if count_samples(nets, mc_samples) > len(nets) else 1
    passes = [StochasticPass(n) for n in nets] if draws > 1 else nets
    log_probs, targets = [], []
    # predict_array seeds the draws with inference.seed: one seed per draw, or every draw is the same.
    base = 0 if cfg.inference.seed is None else int(cfg.inference.seed)
    draw_cfgs = [dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, seed=base + 1 + s)) for s in range(draws)]
    for case in cases:
        samples = [predict_array(passes, case["image"], c, device, mc_samples=1) for c in draw_cfgs]
        mean = np.mean([s["probabilities"] for s in samples], axis=0)
        ref = np.asarray(case["label"][0]).astype(np.int64)
        region = evaluation_region(mean.argmax(axis=0), ref, case["spacing"], margin_mm)
        if not region.any():
            continue
        y = ref[region]
        keep = rng.choice(y.size, size=max_voxels, replace=False) if y.size > max_voxels else np.arange(y.size)
        per_draw = np.stack([s["probabilities"][:, region].T[keep] for s in samples])  # (S, N, C)
        log_probs.append(np.log(np.maximum(per_draw.astype(np.float64), LOG_PROB_FLOOR)))
        targets.append(y[keep])
    if not targets:
        raise DataError("calibration: no held-out case has foreground in prediction or reference; nothing to fit on")
    return np.concatenate(log_probs, axis=1), np.concatenate(targets), draws


def _ece(log_prob: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax_t(log_prob, temperature)  # the mean over draws, as predict outputs it
    return float(expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == y, ECE_BINS))


def calibrate_run(
    run_dir: str | Path,
    *,
    folds: int = 2,
    fold_iterations: int | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    max_voxels_per_case: int = MAX_VOXELS_PER_CASE,
    device: str = "auto",
    mc_samples: int | None = None,
    dataset: str | Path | None = None,
    emit: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Fit the temperature of ``run_dir``'s model and write ``run_dir/calibration.json``.

    Parameters
    ----------
    folds:
        Cross-fitting groups when the run has no validation cases (>= 2).
    fold_iterations:
        Training iterations of each cross-fitting model (default: the run's).
    dataset:
        A ``dataset.json`` whose ``validation`` cases to fit on instead of the run's own
        dataset (a labeled set kept apart from training); the run's otherwise.
    margin_mm, max_voxels_per_case:
        Which voxels are fitted on (module docstring).
    mc_samples:
        Dropout draws per case (default: the run's ``inference.mc_samples``, as predict);
        predict with the same number for the fitted temperature to apply as measured.

    Returns
    -------
    dict
        The content of ``calibration.json``.
    """
    emit = emit or (lambda *a, **k: None)
    run_dir = Path(run_dir)
    start = time.time()
    ckpt = resolve_checkpoint(run_dir)
    model = load_trained(ckpt, device, calibration=False)
    cfg = model.cfg
    if dataset is not None:
        cfg.data.dataset = str(Path(dataset).resolve())
    if not cfg.data.dataset:
        raise DataError(f"{run_dir}: the run's config names no dataset to calibrate on")
    spec = DatasetSpec.from_json(cfg.data.dataset)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "cache"
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    mc = cfg.inference.mc_samples if mc_samples is None else int(mc_samples)
    emit("calibrate_start", run_dir=str(run_dir), checkpoint=str(ckpt), validation_cases=len(spec.validation))

    if spec.validation:
        fitted_on = "validation"
        cases = [c.name for c in spec.validation]
        lp, y, draws = _held_out_voxels(model, load_validation_cases(spec, cfg, cache_dir), margin_mm, max_voxels_per_case, rng, mc)
        fold_runs: list[str] = []
    else:
        if folds < 2:
            raise DataError(f"{run_dir}: no validation cases; cross-fitting needs --folds >= 2, got {folds}")
        if len(spec.training) < folds:
            raise DataError(
                f"{cfg.data.dataset}: no validation cases and only {len(spec.training)} labeled case(s): "
                f"cannot cross-fit on {folds} folds; add a 'validation' list or lower --folds"
            )
        fitted_on = f"cross-fitted on the labeled cases ({folds} folds)"
        cases = [c.name for c in spec.training]
        lp, y, draws, fold_runs = _cross_fit(spec, cfg, run_dir, folds, fold_iterations, margin_mm, max_voxels_per_case, rng, device, emit, mc)

    temperature = fit_temperature(lp, y)
    doc = {
        "method": "temperature scaling (Guo et al. 2017): softmax(logits / T), fitted by NLL; argmax unchanged",
        "temperature": temperature,
        "checkpoint": ckpt.name,
        "checkpoint_iteration": model.iteration,
        "fitted_on": fitted_on,
        "dataset": cfg.data.dataset,
        "cases": cases,
        "fold_runs": fold_runs,
        "region": f"prediction or reference foreground dilated by {margin_mm:g} mm",
        "voxels": int(y.size),
        "max_voxels_per_case": max_voxels_per_case,
        "prediction": (
            f"mean of {draws} MC-dropout draw(s), each softmax(logits / T); sliding window, log of the blended "
            "probabilities" if draws > 1 else "one deterministic pass (no dropout); sliding window, log of the blended probabilities"
        ),
        "mc_samples": draws,
        "nll_before": nll(lp, y, 1.0),
        "nll_after": nll(lp, y, temperature),
        "ece_before": _ece(lp, y, 1.0),
        "ece_after": _ece(lp, y, temperature),
        "metrics_note": "NLL and ECE on the fitting voxels themselves (in-sample for T); measure on other cases "
        "with predict + evaluate",
        "seconds": round(time.time() - start, 1),
    }
    _write_json(run_dir / CALIBRATION_FILE, doc)
    emit("calibrate_done", **{k: doc[k] for k in ("temperature", "nll_before", "nll_after", "ece_before", "ece_after", "voxels")})
    return doc


def _cross_fit(spec, cfg: RunConfig, run_dir: Path, folds: int, fold_iterations, margin_mm, max_voxels, rng, device, emit, mc):
    from .trainer import Trainer

    order = rng.permutation(len(spec.training))
    groups = [sorted(order[k::folds].tolist()) for k in range(folds)]
    lps, ys, runs, draws = [], [], [], 1
    for k, held in enumerate(groups):
        held_cases = [spec.training[i] for i in held]
        train_cases = [c for i, c in enumerate(spec.training) if i not in set(held)]
        fold_dir = run_dir / "calibration" / f"fold_{k}"
        fold_spec = dataclasses.replace(spec, training=train_cases, validation=[], test=[])
        dataset_json = fold_spec.to_json(fold_dir / "dataset.json")
        fold_cfg = RunConfig.from_dict(cfg.to_dict(), source=f"{run_dir} fold {k}")
        fold_cfg.data.dataset = str(dataset_json)
        fold_cfg.train.init_from = None
        if fold_iterations:
            fold_cfg.train.iterations = int(fold_iterations)
        save_config(fold_cfg, fold_dir / "config.yaml")
        emit("calibrate_fold", fold=k, folds=folds, held_out=[c.name for c in held_cases])
        result = Trainer(fold_cfg, fold_dir).fit()
        fold_model = load_trained(result.best_checkpoint, device, calibration=False)
        held_spec = dataclasses.replace(fold_spec, validation=held_cases)
        fold_cache = Path(fold_cfg.data.cache_dir) if fold_cfg.data.cache_dir else fold_dir / "cache"
        cases = load_validation_cases(held_spec, fold_cfg, fold_cache)
        lp, y, draws = _held_out_voxels(fold_model, cases, margin_mm, max_voxels, rng, mc)
        lps.append(lp)
        ys.append(y)
        runs.append(str(fold_dir))
    return np.concatenate(lps, axis=1), np.concatenate(ys), draws, runs


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)
