#!/usr/bin/env python3
"""Peak RAM of a short training run as the unlabeled set grows (1x, 10x, 40x).

A synthetic dataset (``semisup.data.synthetic.make_synthetic_dataset``) of ``--labeled``
labeled and ``--base-unlabeled`` unlabeled volumes is written once; the larger
unlabeled sets reuse those volumes as further files (each its own path, so each is
preprocessed and cached as its own case, as distinct scans would be). For every
size and every ``--workers`` value, ``semisup train`` runs in its own subprocess,
and its peak resident set size is read from that child's rusage (``os.wait4``:
``ru_maxrss`` of the process and its waited-for loader workers). Also reported:
the iterations per second from the progress stream, and what holding every
preprocessed unlabeled volume in memory would cost (the design the cache avoids).

Example::

    python benchmarks/bench_memory.py --out /tmp/bench_memory --multipliers 1 10 40 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SemiSupUncertainty"))

from harness import command_header, write_json  # noqa: E402


def make_data(out: Path, labeled: int, base: int, max_multiplier: int, shape: list[int]) -> dict:
    from semisup.data.synthetic import make_synthetic_dataset

    src = out / "synthetic"
    spec_path = src / "dataset.json"
    if not spec_path.exists():
        make_synthetic_dataset(src, labeled=labeled, unlabeled=base, validation=0, test=0, shape=tuple(shape), seed=7)
    spec = json.loads(spec_path.read_text())
    originals = [src / c["image"] for c in spec["unlabeled"]]
    copies = src / "imagesUnlabeledCopies"
    copies.mkdir(exist_ok=True)
    unlabeled = []
    for i in range(base * max_multiplier):
        original = originals[i % base]
        path = original if i < base else copies / f"copy_{i:04d}.nrrd"
        if not path.exists():
            shutil.copyfile(original, path)
        unlabeled.append(str(path))
    return {"spec": spec, "src": src, "unlabeled": unlabeled}


def _sample_tree(pid: int, peak: list[float], done: threading.Event, every: float = 0.25) -> None:
    """Peak of the summed RSS of a process and its children (loader workers), sampled."""
    import psutil

    try:
        root = psutil.Process(pid)
        while not done.is_set():
            total = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(every)
    except psutil.Error:
        return


def run_one(out: Path, data: dict, count: int, workers: int, args) -> dict:
    name = f"u{count}_w{workers}"
    run = out / name
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    spec = dict(data["spec"])
    spec["training"] = [{"image": str(data["src"] / c["image"]), "label": str(data["src"] / c["label"])}
                        for c in data["spec"]["training"]]
    spec["unlabeled"] = [{"image": p} for p in data["unlabeled"][:count]]
    (run / "dataset.json").write_text(json.dumps(spec))
    cfg = {
        "data": {"dataset": str(run / "dataset.json"), "patch_size": args.patch, "num_workers": workers,
                 "cache_dir": str(run / "cache")},
        "network": {"name": "vnet", "base_filters": args.base_filters},
        "method": {"name": "uamt", "params": {"mc_samples": 2}},
        "train": {"iterations": args.iterations, "log_every": 5, "val_every": 10**6, "checkpoint_every": 10**6},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty")}
    t0 = time.time()
    with open(run / "stdout.jsonl", "w") as stdout, open(run / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "semisup", "train", "--run-dir", str(run), "--progress", "json"],
                                stdout=stdout, stderr=stderr, env=env)
        tree_peak = [0.0]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, tree_peak, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    seconds = time.time() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name}: semisup train exited with {code}; see {run / 'stderr.txt'}")
    events = [json.loads(line) for line in (run / "stdout.jsonl").read_text().splitlines() if line.strip()]
    rates = [e["it_per_s"] for e in events if e["event"] == "iteration" and e.get("it_per_s")]
    image_bytes = 4 * args.shape[0] * args.shape[1] * args.shape[2]  # float32 preprocessed volume
    return {
        "unlabeled": count,
        "workers": workers,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB; the largest single process
        "tree_peak_rss_mib": tree_peak[0] / 2**20,  # sampled sum over the trainer and its loader workers
        "it_per_s": rates[-1] if rates else None,
        "seconds": seconds,
        "all_unlabeled_in_memory_mib": count * image_bytes / 2**20,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_memory")
    ap.add_argument("--labeled", type=int, default=4)
    ap.add_argument("--base-unlabeled", type=int, default=4)
    ap.add_argument("--multipliers", type=int, nargs="+", default=[1, 10, 40])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    ap.add_argument("--base-filters", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data = make_data(args.out, args.labeled, args.base_unlabeled, max(args.multipliers), args.shape)
    rows = []
    for workers in args.workers:
        for m in args.multipliers:
            row = run_one(args.out, data, args.base_unlabeled * m, workers, args)
            row["multiplier"] = m
            rows.append(row)
            print(f"  {m}x ({row['unlabeled']} unlabeled), {workers} workers: peak RSS {row['peak_rss_mib']:.0f} MiB "
                  f"(tree {row['tree_peak_rss_mib']:.0f} MiB), "
                  f"{row['it_per_s'] or 0:.2f} it/s", file=sys.stderr, flush=True)
    report = {**command_header(), "volume_shape": args.shape, "rows": rows}
    print(f"\nPeak RSS of `semisup train` ({args.iterations} iterations, UA-MT, V-Net {args.base_filters} filters, "
          f"patch {args.patch}, {args.labeled} labeled volumes of {args.shape})\n")
    print("| unlabeled volumes | loader workers | peak RSS MiB (largest process) | peak RSS MiB (trainer + workers, "
          "sampled sum) | it/s | all unlabeled volumes in RAM would be MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['unlabeled']} ({r['multiplier']}x) | {r['workers']} | {r['peak_rss_mib']:.0f} | "
              f"{r['tree_peak_rss_mib']:.0f} | {r['it_per_s'] or 0:.2f} | {r['all_unlabeled_in_memory_mib']:.0f} |")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
