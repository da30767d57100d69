#!/usr/bin/env python3
"""LA2018 UA-MT at full resolution on one NVIDIA GPU, inside a fixed wall-clock budget.

Issue 14 item 6. In one run of at most ``--minutes`` (default 8) it

1. writes the bench_la split (first 16 cases labeled, last 16 the report set, the
   cases between unlabeled; ``benchmarks/bench_la.py``),
2. trains the paper setting (0.625 mm, V-Net 16 filters, 112 x 112 x 80, batch 2 + 2,
   UA-MT with T = 8, SGD 0.01, AMP, channels-last) for as many iterations as fit: a
   short calibration run measures the step rate, then the budget is set to the
   iterations that fit the time left, with the learning-rate step and the ramps
   scaled to it (``bench_la.scaled``: the paper's 2500/6000 and 40 "epochs"), and a
   timer stops training (``last.pt`` kept) should it run late,
3. scores ``last.pt`` on the 16 report cases (``semisup predict`` T = 8, ``evaluate``),
4. times the T = 8 MC-dropout inference of one full LA2018 volume (after a warm-up).

``--smoke`` runs the same code on the CPU in seconds: synthetic volumes, a 4-filter
V-Net, 16^3 patches, a few iterations (the test suite runs it).

Example (GPU)::

    python benchmarks/gpu_la_full.py --minutes 8 --out runs/gpu_la_full
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from harness import REPO, run_header, write_json

sys.path.insert(0, str(REPO / "SemiSupUncertainty"))

#: Seconds kept for scoring the 16 report cases and timing one volume after training.
SCORING_RESERVE_S = 120.0
#: Calibration iterations (the first ones include CUDA start-up and cuDNN autotuning).
CALIBRATION_ITERATIONS = 30
PAPER_ITERATIONS = 6000


def _config(dataset: Path, cache: Path, smoke: bool, device: str) -> dict:
    import bench_la

    setting = bench_la.SETTINGS["paper"]
    cfg = {
        "data": {**setting["data"], "dataset": str(dataset), "cache_dir": str(cache)},
        "network": dict(setting["network"]),
        "method": {"name": "uamt", "params": dict(setting["method_params"]["uamt"])},
        "train": {**setting["train"], "amp": True, "channels_last": True, "device": device, "seed": 1337,
                  "val_every": 10**9},
        "inference": dict(setting["inference"]),
    }
    if smoke:
        cfg["data"]["patch_size"] = [16, 16, 16]
        cfg["network"]["base_filters"] = 4
        cfg["method"]["params"]["mc_samples"] = 2
        cfg["inference"]["mc_samples"] = 2
    return cfg


def _train(cfg_raw: dict, run_dir: Path, iterations: int, deadline: float) -> tuple[int, float, list[float]]:
    """Train ``iterations`` (ramps scaled) or until ``deadline``; returns (iterations done, seconds, it/s)."""
    import bench_la
    from semisup.config import RunConfig
    from semisup.engine.trainer import Trainer, TrainingCancelled

    train, params = bench_la.scaled({"train": cfg_raw["train"], "method_params": {"uamt": cfg_raw["method"]["params"]}},
                                    "uamt", iterations)
    raw = {**cfg_raw, "train": train, "method": {"name": "uamt", "params": params}}
    cfg = RunConfig.from_dict(raw)
    rates: list[float] = []
    done = [0]

    def emit(event: str, **fields) -> None:
        if event == "iteration":
            done[0] = fields["iteration"]
            if fields.get("it_per_s"):
                rates.append(fields["it_per_s"])

    trainer = Trainer(cfg, run_dir, emit)
    timer = threading.Timer(max(0.0, deadline - time.time()), trainer.request_stop)
    timer.start()
    t0 = time.time()
    try:
        trainer.fit()
    except TrainingCancelled:
        pass  # the budget ran out: last.pt holds the iterations done
    finally:
        timer.cancel()
    return done[0], time.time() - t0, rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "LA2018")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole run")
    ap.add_argument("--smoke", action="store_true", help="CPU, synthetic data, seconds: checks the script runs")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_la_full")
    ap.add_argument("--results", type=Path, help="default: <out>/gpu_la_full.json")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.minutes * 60
    import torch

    import bench_la
    from semisup.data import DatasetSpec, preprocess_image, read_image
    from semisup.engine.predict import load_trained, predict_files
    from semisup.inference import predict_volume
    from semisup.measure.evaluate import evaluate_predictions

    out = args.out.resolve()
    if args.smoke:
        from semisup.data.synthetic import make_synthetic_dataset

        device = "cpu"
        raw = make_synthetic_dataset(out / "data", labeled=2, unlabeled=2, validation=2, test=0, shape=(32, 32, 16), seed=0)
        dataset = raw
        calibration, reserve = 2, 0.0
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this script is for a GPU (use --smoke to check it on the CPU)")
        if not (args.data / "dataset.json").exists():
            raise SystemExit(f"LA2018 not found at {args.data}")
        device = "cuda"
        dataset = bench_la.write_split(args.data, 16, out)
        calibration, reserve = CALIBRATION_ITERATIONS, SCORING_RESERVE_S
    # Training sees no validation list: the report set is never evaluated, let alone chosen on, during training.
    split = json.loads(Path(dataset).read_text())
    train_split = Path(dataset).parent / "dataset_train.json"  # beside it: relative paths stay valid
    train_split.write_text(json.dumps({k: v for k, v in split.items() if k != "validation"}, indent=1))
    cfg_raw = _config(train_split, out / "cache", args.smoke, device)

    # 1. Calibration: the step rate at this setting on this device (cache filled on the way).
    cal_iters, cal_s, cal_rates = _train(cfg_raw, out / "calibration", calibration, deadline - reserve)
    rate = cal_rates[-1] if cal_rates else cal_iters / max(cal_s, 1e-6)
    left = deadline - reserve - time.time()
    iterations = 3 if args.smoke else max(10, min(PAPER_ITERATIONS, int(rate * left * 0.95)))
    # 2. The run itself, stopped by the deadline should the rate drop.
    done, train_s, rates = _train(cfg_raw, out / "run", iterations, deadline - reserve)

    # 3. Score last.pt on the report set.
    spec = DatasetSpec.from_json(dataset)
    model = load_trained(out / "run" / "checkpoints" / "last.pt", device)
    images = [c.image for c in spec.validation]
    t0 = time.time()
    predict_files(model, images, out / "predictions")
    predict_s = time.time() - t0
    summary = evaluate_predictions(out / "predictions", dataset=dataset, split="validation")
    dice = summary["mean"]["dice"]["mean"] if "mean" in summary else None

    # 4. T = 8 MC inference of one full volume (warm-up first, then timed).
    image = torch.from_numpy(preprocess_image(read_image(images[0]), model.cfg.data))[None]
    inf = model.cfg.inference
    kwargs = dict(mc_samples=inf.mc_samples, overlap=inf.overlap, sw_batch_size=inf.sw_batch_size,
                  device=device, amp=device == "cuda", blend_mode=inf.blend_mode, seed=inf.seed,
                  shared_masks=inf.shared_masks)
    predict_volume(model.networks, image, model.cfg.data.patch_size, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    predict_volume(model.networks, image, model.cfg.data.patch_size, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    mc_s = time.time() - t0

    result = {
        **run_header(torch.device(device)),
        "smoke": args.smoke,
        "budget_minutes": args.minutes,
        "calibration": {"iterations": cal_iters, "seconds": cal_s, "it_per_s": rate},
        "planned_iterations": iterations,
        "iterations_done": done,
        "train_seconds": train_s,
        "it_per_s": rates[-1] if rates else None,
        "report_cases": len(images),
        "dice_mean": dice,
        "predict_seconds_per_case": predict_s / max(1, len(images)),
        "mc_inference_seconds_one_volume": mc_s,
        "mc_samples": inf.mc_samples,
        "volume_shape": list(image.shape[2:]),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "total_minutes": (time.time() - start) / 60,
    }
    write_json(args.results or out / "gpu_la_full.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
