"""DistributedDataParallel training: 2 processes, gloo on the CPU, the real CLI under torchrun.

One torchrun launch of 2 ranks trains UA-MT and then UCMT for a few iterations on a
tiny synthetic dataset through ``semisup.cli.main`` (the same code path as
``torchrun --nproc_per_node=2 -m semisup train ...``). A thin worker script around
the CLI records, on every rank, the final state of the method (students, EMA
teachers, BatchNorm buffers) and a fingerprint of every batch it trained on. Then:

- students, teachers and buffers are bit-identical on both ranks (gradients
  all-reduced, buffers averaged, EMA computed from identical weights);
- the ranks trained on different batches (each rank its own data stream);
- rank 0 alone reported progress and wrote the checkpoint, which holds those weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from semisup.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

WORKER = r'''
import os, sys
from pathlib import Path
import torch
import semisup.engine.trainer as trainer

out = Path(sys.argv[1])
runs = sys.argv[2:]
rank = int(os.environ["RANK"])
captured = {}
_build = trainer.build_method
_to_device = trainer._to_device


def build_method(*args, **kwargs):
    captured["method"] = _build(*args, **kwargs)
    return captured["method"]


def to_device(batch, device):
    # Fingerprint of each batch this rank trains on: case names and the crop's pixel sum.
    captured.setdefault("batches", []).append([list(batch["name"]), float(batch["image"].double().sum())])
    return _to_device(batch, device)


trainer.build_method = build_method
trainer._to_device = to_device
from semisup.cli import main

for run in runs:
    captured.clear()
    rc = main(["train", "--run-dir", run, "--progress", "none"])
    if rc != 0:
        sys.exit(rc)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in captured["method"].state_dict().items()}
    torch.save({"state": state, "batches": captured["batches"]}, out / f"{Path(run).name}_rank{rank}.pt")
'''


def _config(dataset: Path, method: str) -> dict:
    params = {"mc_samples": 2, "iterations_per_epoch": 1, "consistency_rampup": 2.0} if method == "uamt" else {"iterations_per_epoch": 1}
    return {
        "data": {"dataset": str(dataset), "patch_size": [32, 32, 16]},
        "network": {"name": "vnet", "base_filters": 4},
        "method": {"name": method, "params": params},
        "train": {"iterations": 4, "lr": 0.05, "val_every": 4, "checkpoint_every": 4, "log_every": 1,
                  "optimizer": "sgd" if method == "uamt" else "adamw"},
        "inference": {"mc_samples": 1, "overlap": 0.0},
    }


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    dataset = make_synthetic_dataset(root / "data", labeled=4, unlabeled=6, validation=1, test=0, shape=(40, 40, 24), seed=5)
    methods = ["uamt", "ucmt"]
    runs = []
    for method in methods:
        run = root / method
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(_config(dataset, method)))
        runs.append(run)
    worker = root / "worker.py"
    worker.write_text(WORKER)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "SemiSupUncertainty"),
        "OMP_NUM_THREADS": "1",
        "SEMISUP_MEMORY_CHECK": "0",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(root),
           *map(str, runs)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # SIGTERM: torchrun then stops its workers (SIGKILL after its grace period); a
        # SIGKILL to torchrun alone would leave them running.
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail("torchrun did not finish in 240 s (hang in a collective?)\n" + stderr[-6000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return {m: (run, [torch.load(root / f"{m}_rank{r}.pt", weights_only=True) for r in (0, 1)]) for m, run in zip(methods, runs)}


@pytest.mark.parametrize("method", ["uamt", "ucmt"])
def test_ranks_hold_identical_students_teachers_and_buffers(ddp_runs, method):
    _, (r0, r1) = ddp_runs[method]
    assert r0["state"].keys() == r1["state"].keys()
    teacher_keys = [k for k in r0["state"] if k.startswith("teacher.")]
    assert teacher_keys and any("running_mean" in k for k in teacher_keys)
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), f"{method}: {key} differs between ranks"


@pytest.mark.parametrize("method", ["uamt", "ucmt"])
def test_ranks_trained_on_different_batches(ddp_runs, method):
    _, (r0, r1) = ddp_runs[method]
    # 4 iterations x (labeled + unlabeled) batches on each rank
    assert len(r0["batches"]) == len(r1["batches"]) == 8
    sums0 = [s for _, s in r0["batches"]]
    sums1 = [s for _, s in r1["batches"]]
    assert all(abs(a - b) > 1e-6 for a, b in zip(sums0, sums1)), "a rank trained on the other rank's batch"


@pytest.mark.parametrize("method", ["uamt", "ucmt"])
def test_rank0_alone_reports_and_checkpoints_the_shared_weights(ddp_runs, method):
    run, (r0, _) = ddp_runs[method]
    events = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines() if line.strip()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    iterations = [e["iteration"] for e in events if e["event"] == "iteration"]
    assert iterations == [1, 2, 3, 4]  # one report per iteration, not one per rank
    assert sum(e["event"] == "validation" for e in events) == 1
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    for key, value in r0["state"].items():
        assert torch.equal(ckpt["method"][key].cpu(), value), key
