#!/usr/bin/env python3
"""Why one recipe and seed gives different models: thread count and deterministic kernels.

Trains the same tiny UA-MT run (synthetic data, V-Net 8 filters, 32x32x16 patches,
``--iterations`` iterations, seed 1337) as ``semisup train`` subprocesses, each with a
given CPU thread count (``train.threads``) and ``train.deterministic`` on or off, and
compares every run with the first (1 thread): the first iteration whose logged loss
differs, and the largest weight difference in ``last.pt``.

Example::

    python benchmarks/bench_determinism.py --iterations 40 --out runs/determinism
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml
from harness import REPO, child_env, command_header, write_json

#: (name, threads, deterministic): the reference first.
RUNS = [("t1", 1, False), ("t1_again", 1, False), ("t2", 2, False), ("t1_det", 1, True), ("t2_det", 2, True),
        ("t2_det_again", 2, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "determinism")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "determinism.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "SemiSupUncertainty"))
    import torch

    from semisup.data.synthetic import make_synthetic_dataset

    out = args.out.resolve()
    dataset = make_synthetic_dataset(out / "data", labeled=2, unlabeled=4, validation=0, test=0, seed=1)
    losses, weights = {}, {}
    for name, threads, det in RUNS:
        run = out / name
        run.mkdir(parents=True, exist_ok=True)
        cfg = {"data": {"dataset": str(dataset), "patch_size": [32, 32, 16]},
               "network": {"name": "vnet", "base_filters": 8},
               "method": {"name": "uamt", "params": {"iterations_per_epoch": 2, "mc_samples": 2}},
               "train": {"iterations": args.iterations, "log_every": 1, "checkpoint_every": args.iterations,
                         "val_every": 10**6, "seed": 1337, "threads": threads, "deterministic": det}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        # OMP_NUM_THREADS as the thread count too: the process's pools match train.threads.
        subprocess.run([sys.executable, "-m", "semisup", "train", "--run-dir", str(run), "--progress", "none"],
                       check=True, env=child_env(threads))
        events = [json.loads(l) for l in (run / "progress.jsonl").read_text().splitlines() if l.strip()]
        losses[name] = [e["loss"] for e in events if e["event"] == "iteration"]
        weights[name] = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]
    ref = RUNS[0][0]
    rows = {}
    for name, threads, det in RUNS:
        first = next((i + 1 for i, (a, b) in enumerate(zip(losses[ref], losses[name])) if a != b), None)
        diff = max(float((weights[ref][k].float() - weights[name][k].float()).abs().max()) for k in weights[ref]
                   if weights[ref][k].is_floating_point())
        rows[name] = {"threads": threads, "deterministic": det, "first_loss_difference_at": first,
                      "max_weight_difference": diff, "final_loss": losses[name][-1]}
        print(f"{name:14s} threads {threads} deterministic {det!s:5s} first differing iteration {first} "
              f"max |w - w_ref| {diff:.3g}", flush=True)
    # Same settings, run twice: is each configuration reproducible on its own?
    pairs = {"t1 vs t1_again": ("t1", "t1_again"), "t2_det vs t2_det_again": ("t2_det", "t2_det_again")}
    repeat = {k: all(torch.equal(weights[a][n], weights[b][n]) for n in weights[a]) for k, (a, b) in pairs.items()}
    print(json.dumps(repeat))
    write_json(args.results, {**command_header(), "torch": torch.__version__, "iterations": args.iterations,
                              "reference": ref, "runs": rows, "identical_repeats": repeat})


if __name__ == "__main__":
    main()
