"""The embedded demo: synthetic data, a short CPU training, predictions and a report.

Everything is written under one folder::

    <out>/data/          synthetic dataset (dataset.json, NRRD volumes)
    <out>/run/           run folder (config.yaml, checkpoints, progress.jsonl)
    <out>/predictions/   label maps, uncertainty maps, scores.csv, metrics.csv/json
    <out>/report.md      metrics, uncertainty ranking and report.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path
import argparse
import sys
from typing import Callable

from ..config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig, save_config
from ..data import DatasetSpec, image_to_array, read_image
from ..engine import Emitter, FileSink
from ..engine.trainer import Trainer
from ..measure.evaluate import evaluate_predictions
from ..engine.predict import load_trained, predict_files
from ..measure.report import write_report
from ..data.synthetic import make_synthetic_dataset
from .exit_codes import EXIT_OK

__all__ = ["demo_config", "run", "run_demo", "DEMO_ITERATIONS"]

#: One to four minutes of UA-MT on two CPU cores (docs/benchmarks.md, demo rows).
DEMO_ITERATIONS = 300


def demo_config(dataset: Path, iterations: int, method: str = "uamt") -> RunConfig:
    """A small V-Net (8 base filters) on 48 x 48 x 32 patches; ramps shortened to the budget."""
    # UA-MT's ramps are in "epochs" of 150 iterations over 6000; shrink them in proportion
    # so the consistency term and threshold reach full strength within the short run.
    per_epoch = max(1, iterations // 40)
    params = {"iterations_per_epoch": per_epoch, "consistency_rampup": 20.0, "mc_samples": 4} if method in ("uamt", "mean_teacher") else {}
    return RunConfig(
        data=DataConfig(dataset=str(dataset), modality="MR", spatial_dims=3, patch_size=[32, 32, 16], foreground_oversample=0.5),
        network=NetworkConfig(name="vnet", base_filters=8, dropout=True),
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(
            iterations=iterations,
            labeled_batch=2,
            unlabeled_batch=2,
            lr=0.03,
            lr_step=max(1, int(iterations * 0.8)),
            val_every=max(1, iterations // 5),
            checkpoint_every=max(1, iterations // 10),
            log_every=max(1, iterations // 100),
        ),
        inference=InferenceConfig(overlap=0.25, mc_samples=8),
    )


def run_demo(
    output: str | Path,
    *,
    iterations: int | None = None,
    method: str = "uamt",
    emit: Emitter | Callable | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Run the whole demo and return the report files."""
    out = Path(output)
    if any((out / "run" / "checkpoints" / n).exists() for n in ("last.pt", "best.pt")):
        raise ConfigError(f"{out}: already holds a demo run; choose another --output or delete that folder")
    emit = emit or Emitter()
    start = time.time()
    dataset_json = make_synthetic_dataset(out / "data", seed=seed)
    cfg = demo_config(dataset_json, iterations or DEMO_ITERATIONS, method)
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if isinstance(emit, Emitter):  # the run folder keeps its own record, as with `semisup train`
        emit.sinks.append(FileSink(run_dir / "progress.jsonl"))
    result = Trainer(cfg, run_dir, emit).fit()

    spec = DatasetSpec.from_json(dataset_json)
    model = load_trained(result.best_checkpoint, "auto")
    pred_dir = out / "predictions"
    rows = predict_files(model, [c.image for c in spec.test], pred_dir, save_probabilities=True, emit=emit)
    summary = evaluate_predictions(pred_dir, dataset=dataset_json, split="test")
    metric_rows = {r["case"]: r for r in json.loads((pred_dir / "metrics.json").read_text())["cases"]}
    per_case = [{**metric_rows[r["case"]], **r} for r in rows]

    first = spec.test[0]
    row = next(r for r in rows if r["case"] == first.name)
    figure_case = {
        "name": first.name,
        "image": image_to_array(read_image(first.image)),
        "label_pred": image_to_array(read_image(row["label"])),
        "uncertainty": image_to_array(read_image(row["uncertainty"])),
        "label_ref": image_to_array(read_image(first.label)),
    }
    run_info = {
        "method": cfg.method.name,
        "network": f"{cfg.network.name} ({cfg.network.base_filters} base filters)",
        "iterations": result.iteration,
        "training_seconds": round(result.seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "best_validation_dice": round(result.best_dice, 4),
        "labeled_cases": len(spec.training),
        "unlabeled_cases": len(spec.unlabeled),
        "test_cases": len(spec.test),
        "mc_samples": cfg.inference.mc_samples,
    }
    return write_report(out, metrics_summary=summary, per_case=per_case, figure_case=figure_case, run_info=run_info)


def run(args: argparse.Namespace, emit: Emitter) -> int:
    paths = run_demo(args.output, iterations=args.iterations, method=args.method, emit=emit)
    print(f"demo report: {paths['markdown']}", file=sys.stderr)
    return EXIT_OK
