#!/usr/bin/env python3
"""Training throughput: one process against 2 DistributedDataParallel processes (torchrun).

Same synthetic dataset, config and iteration count; the single process uses all
``--threads`` CPU threads, each of the ``--nproc`` DDP processes ``threads / nproc``
(so both use the same cores; on GPUs give each process its GPU instead). Reported:
iterations per second (from the progress stream, rank 0), volumes per second
(iterations x (labeled + unlabeled batch) x processes) and the wall time of the
whole command including start-up. Runs alternate ``--repeats`` times; medians.

Example::

    python benchmarks/bench_ddp.py --out /tmp/bench_ddp --iterations 30 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SemiSupUncertainty"))

from harness import command_header, write_json  # noqa: E402


def run(out: Path, dataset: Path, nproc: int, threads: int, args, tag: str) -> dict:
    run_dir = out / tag
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg = {
        "data": {"dataset": str(dataset), "patch_size": args.patch, "cache_dir": str(out / "cache")},
        "network": {"name": "vnet", "base_filters": args.base_filters},
        "method": {"name": args.method, "params": {"mc_samples": args.mc_samples} if args.method == "uamt" else {}},
        "train": {"iterations": args.iterations, "log_every": 5, "val_every": 10**6, "checkpoint_every": 10**6,
                  "labeled_batch": 2, "unlabeled_batch": 2},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": str(threads)}
    train = ["-m", "semisup", "train", "--run-dir", str(run_dir), "--progress", "json"]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    t0 = time.time()
    proc = subprocess.run([*launcher, *train], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{proc.stderr[-4000:]}")
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines() if line.strip()]
    its = [e for e in events if e["event"] == "iteration"]
    # Rate over the last logged iterations (after warm-up): iterations between two reports / time between them.
    first, last = its[len(its) // 3], its[-1]
    rate = (last["iteration"] - first["iteration"]) / max(last["time"] - first["time"], 1e-9)
    return {"nproc": nproc, "threads_per_process": threads, "it_per_s": rate,
            "volumes_per_s": rate * 4 * nproc, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ddp")
    ap.add_argument("--method", default="uamt")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    ap.add_argument("--base-filters", type=int, default=8)
    ap.add_argument("--mc-samples", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from semisup.data.synthetic import make_synthetic_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    dataset = args.out / "data" / "dataset.json"
    if not dataset.exists():
        dataset = make_synthetic_dataset(args.out / "data", labeled=4, unlabeled=8, validation=0, test=0,
                                         shape=(96, 96, 48), seed=11)
    results: dict[str, list[dict]] = {"single": [], "ddp": []}
    for r in range(args.repeats):
        results["single"].append(run(args.out, dataset, 1, args.threads, args, f"single_{r}"))
        results["ddp"].append(run(args.out, dataset, args.nproc, max(1, args.threads // args.nproc), args, f"ddp_{r}"))
        print(f"  repeat {r + 1}: single {results['single'][-1]['volumes_per_s']:.2f} vol/s, "
              f"ddp {results['ddp'][-1]['volumes_per_s']:.2f} vol/s", file=sys.stderr, flush=True)
    summary = {k: {m: statistics.median(x[m] for x in v) for m in ("it_per_s", "volumes_per_s", "wall_s")}
               for k, v in results.items()}
    print(f"\n{args.method}, V-Net {args.base_filters} filters, patch {args.patch}, batch 2 + 2 per process, "
          f"{args.iterations} iterations, {args.threads} threads in all\n")
    print("| run | processes x threads | it/s | volumes/s | wall s (incl. start-up) |")
    print("|---|---|---|---|---|")
    print(f"| single process | 1 x {args.threads} | {summary['single']['it_per_s']:.3f} | "
          f"{summary['single']['volumes_per_s']:.2f} | {summary['single']['wall_s']:.0f} |")
    print(f"| torchrun DDP (gloo) | {args.nproc} x {max(1, args.threads // args.nproc)} | "
          f"{summary['ddp']['it_per_s']:.3f} | {summary['ddp']['volumes_per_s']:.2f} | {summary['ddp']['wall_s']:.0f} |")
    if args.json:
        write_json(args.json, {**command_header(), "results": results, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
