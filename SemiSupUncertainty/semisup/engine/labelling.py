"""A simulated labelling loop: train, predict the pool, pick the next volumes, reveal their labels.

The labeled cases of the dataset (``training``) are the candidates; their labels
stay hidden until a strategy picks them. The fixed held-out set is the dataset's
``validation`` list (else its labeled ``test`` list): it is never picked from, and
never used to choose anything (the model of each round is its last iterate, not a
best-on-validation checkpoint). For each seed the first ``start`` volumes of a
seeded permutation are labeled; every strategy starts from these same volumes with
the same training seed, so the strategies are paired by seed.

Each round writes its own folder ``<out>/seed<s>/<strategy>/round<r>_n<n>/``
(dataset.json, run/, eval/, pool/); round 0, the same for every strategy, is trained
once per seed in ``<out>/seed<s>/round0_n<start>/``; the results (:mod:`semisup.measure.labelling_curve`)
are rewritten after every round, so an interrupted loop keeps what it measured.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import RunConfig
from ..data import Case, DataError, DatasetSpec, preprocess_image, read_image
from ..inference.selection import STRATEGIES, intensity_histogram, select_next
from ..measure.evaluate import evaluate_predictions
from ..measure.labelling_curve import write_labelling_results
from .predict import load_trained, predict_files
from .trainer import Trainer

__all__ = ["simulate_labelling", "LabellingPlan", "SEED_STRIDE"]

log = logging.getLogger(__name__)

#: Training seed of (seed s, round r) = train.seed + SEED_STRIDE * s + r: shared by the strategies.
SEED_STRIDE: int = 1000


@dataclasses.dataclass
class LabellingPlan:
    """What the loop does; checked before anything is trained."""

    strategies: list[str]
    seeds: list[int]
    start: int
    step: int
    budget: int
    warm_start: bool = True
    mc_samples: int | None = None
    hold_out: int = 0  # move the last N labeled cases to the held-out set (DatasetSpec.hold_out_validation)
    pool_size: int | None = None  # keep the first N candidates (file order): a smaller pool predicts faster

    def budgets(self) -> list[int]:
        return list(range(self.start, self.budget + 1, self.step))

    def check(self, spec: DatasetSpec, source: str) -> tuple[list[Case], list[Case]]:
        """The candidate pool and the held-out set; clear errors before any training."""
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise DataError(f"unknown strategy {unknown}; available: {', '.join(STRATEGIES)}")
        if not self.seeds:
            raise DataError("give at least one seed")
        if self.start < 1 or self.step < 1 or self.budget < self.start:
            raise DataError(f"need 1 <= start <= budget and step >= 1, got start {self.start}, step {self.step}, budget {self.budget}")
        held = list(spec.validation) or [c for c in spec.test if c.label is not None]
        if not held:
            raise DataError(f"{source}: no held-out set: list labeled cases under 'validation' (or 'test' with labels)")
        pool = list(spec.training)
        if self.pool_size is not None:
            if self.pool_size < 1:
                raise DataError(f"--pool-size must be at least 1, got {self.pool_size}")
            pool = pool[: self.pool_size]
        needed = self.budgets()[-1]
        if needed > len(pool):
            names = ", ".join(c.name for c in pool)
            raise DataError(
                f"{source}: the pool is smaller than the loop needs: {len(pool)} labeled candidate(s) ({names}) "
                f"but start {self.start} + {self.step} per round up to {needed}; lower --budget or --step"
            )
        return pool, held


def _round_spec(spec: DatasetSpec, labeled: list[Case], pool: list[Case], held: list[Case]) -> DatasetSpec:
    hidden = [Case(c.name, c.image, None) for c in pool]  # pool labels stay hidden
    return dataclasses.replace(spec, training=list(labeled), validation=[], unlabeled=[*hidden, *spec.unlabeled], test=list(held))


def simulate_labelling(
    cfg: RunConfig,
    output: str | Path,
    plan: LabellingPlan,
    *,
    emit: Callable[..., None] | None = None,
    device: str = "auto",
) -> dict[str, Path]:
    """Run the loop for every seed and strategy; returns the result files (CSV, JSON, PNG)."""
    emit = emit or (lambda *a, **k: None)
    out = Path(output)
    spec = DatasetSpec.from_json(cfg.data.dataset)
    if plan.hold_out:
        spec = spec.hold_out_validation(plan.hold_out)
    candidates, held = plan.check(spec, cfg.data.dataset)
    features: dict[str, np.ndarray] = {}
    if "diverse" in plan.strategies:
        for case in candidates:
            features[case.name] = intensity_histogram(preprocess_image(read_image(case.image), cfg.data))
    settings = {
        "dataset": cfg.data.dataset,
        "dataset_name": spec.name,
        "method": cfg.method.name,
        "iterations_per_round": cfg.train.iterations,
        "strategies": plan.strategies,
        "seeds": plan.seeds,
        "start": plan.start,
        "step": plan.step,
        "budgets": plan.budgets(),
        "warm_start": (
            "round r > 0 starts from round r-1's weights (train.init_from: weights only; optimizer and schedule restart)"
            if plan.warm_start else "every round trains from scratch"
        ),
        "model_of_a_round": "last iterate (no checkpoint chosen on the held-out set)",
        "eval_cases": len(held),
        "held_out": [c.name for c in held],
        "candidates": [c.name for c in candidates],
        "mc_samples": plan.mc_samples if plan.mc_samples is not None else cfg.inference.mc_samples,
    }
    rows: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    start_time = time.time()
    budgets = plan.budgets()
    # One preprocessing cache for every round (entries are keyed by file and data settings).
    cache_dir = cfg.data.cache_dir or str((out / "cache").resolve())
    scores_needed = len(budgets) > 1 and any(s != "random" for s in plan.strategies)
    for seed in plan.seeds:
        order = np.random.default_rng(seed).permutation(len(candidates))
        initial = [candidates[i] for i in order[: plan.start]]
        # Round 0 has the same labeled volumes and training seed for every strategy: one model serves all.
        first: dict[str, Any] | None = None
        for strategy in plan.strategies:
            rng = np.random.default_rng([seed, 1])  # random picks: the same draws on every rerun
            labeled = list(initial)
            pool = [candidates[i] for i in order[plan.start :]]
            previous: Path | None = None
            for rnd, n in enumerate(budgets):
                if rnd == 0:
                    if first is None:
                        folder = out / f"seed{seed}" / f"round0_n{n}"
                        first = _round(cfg, spec, folder, seed, rnd, labeled, pool, held, None, plan, device,
                                       score_pool=scores_needed, cache_dir=cache_dir)
                    row = {**first, "strategy": strategy, "picked_next": []}
                else:
                    folder = out / f"seed{seed}" / strategy / f"round{rnd}_n{n}"
                    row = _round(cfg, spec, folder, seed, rnd, labeled, pool, held, previous, plan, device,
                                 score_pool=strategy != "random" and rnd < len(budgets) - 1, cache_dir=cache_dir)
                    row["strategy"] = strategy
                previous = Path(row.pop("_checkpoint"))
                last = rnd == len(budgets) - 1
                if not last:
                    picked = _pick(strategy, row.pop("_pool_scores", None), pool, labeled, plan.step, rng, features)
                    row["picked_next"] = picked
                    by_name = {c.name: c for c in pool}
                    labeled += [by_name[name] for name in picked]  # in pick order
                    pool = [c for c in pool if c.name not in picked]
                row.pop("_pool_scores", None)
                rows.append(row)
                paths = write_labelling_results(rows, out, {**settings, "seconds": round(time.time() - start_time, 1)})
                emit("labelling_round", **{k: row[k] for k in ("seed", "strategy", "round", "n_labeled", "dice")})
    return paths


def _round(cfg, spec, folder, seed, rnd, labeled, pool, held, previous, plan, device, *, score_pool, cache_dir) -> dict[str, Any]:
    dataset_json = _round_spec(spec, labeled, pool, held).to_json(folder / "dataset.json")
    rcfg = RunConfig.from_dict(cfg.to_dict(), source=str(folder))
    rcfg.data.dataset = str(dataset_json)
    rcfg.data.cache_dir = cache_dir
    rcfg.train.seed = cfg.train.seed + SEED_STRIDE * seed + rnd
    rcfg.train.init_from = str(previous) if (plan.warm_start and previous is not None) else None
    run_dir = folder / "run"  # the trainer writes its config.yaml there
    result = Trainer(rcfg, run_dir).fit()
    # The last iterate: best.pt of a run without validation is the final model (trainer).
    model = load_trained(result.best_checkpoint, device, calibration=False)
    mc = plan.mc_samples
    predict_files(model, [c.image for c in held], folder / "eval", mc_samples=mc)
    summary = evaluate_predictions(folder / "eval", dataset=dataset_json, split="test")
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    auroc = (summary.get("uncertainty", {}).get("auroc") or {}).get("mean")
    row: dict[str, Any] = {
        "seed": seed,
        "round": rnd,
        "n_labeled": len(labeled),
        "dice": summary["mean"]["dice"]["mean"],
        "case_dice": {c["case"]: c["mean"]["dice"] for c in metrics["cases"]},
        "auroc": auroc,
        "labeled": [c.name for c in labeled],
        "picked_next": [],
        "warm_start_from": rcfg.train.init_from or "",
        "train_seconds": round(result.seconds, 1),
        "_checkpoint": str(result.best_checkpoint),
    }
    if score_pool and pool:
        scored = predict_files(model, [c.image for c in pool], folder / "pool", mc_samples=mc)
        row["_pool_scores"] = {r["case"]: r for r in scored}
    return row


def _pick(strategy, scores, pool: Sequence[Case], labeled: Sequence[Case], k, rng, features) -> list[str]:
    try:
        return select_next(
            strategy, [c.name for c in pool], k, rng=rng, scores=scores, features=features or None,
            labeled=[c.name for c in labeled],
        )
    except ValueError as exc:
        raise DataError(f"{strategy}: {exc}") from None
