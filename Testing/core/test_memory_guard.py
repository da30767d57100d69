"""Memory guard: the estimate before training, the message when a run does not fit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from semisup.config import ConfigError, DataConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.engine import memory
from semisup.engine.trainer import Trainer
from semisup.methods import build_method
from semisup.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


def _cfg(patch=(32, 32, 16), method="uamt", filters=4, **train) -> RunConfig:
    params = {"mc_samples": 2} if method == "uamt" else {}
    return RunConfig(
        data=DataConfig(patch_size=list(patch)),
        network=NetworkConfig(name="vnet", base_filters=filters),
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(**{"iterations": 10, **train}),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memdata")
    return make_synthetic_dataset(root, labeled=2, unlabeled=2, validation=0, test=0, shape=(32, 32, 16), seed=1)


def test_probe_leaves_weights_and_rng_untouched():
    cfg = _cfg()
    method = build_method(cfg, 2)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    est = memory.estimate_training_memory(method, cfg, 2)
    assert est is not None and est.total > 0 and est.probe_patch == (32, 32, 16)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in method.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_estimate_scales_with_patch_and_is_close_to_a_full_size_probe(monkeypatch):
    # 64x32x32 is probed at 32x32x32 and scaled by 2; a probe at the full patch is the truth.
    cfg = _cfg(patch=(64, 32, 32))
    method = build_method(cfg, 2)
    scaled = memory.estimate_training_memory(method, cfg, 2)
    monkeypatch.setattr(memory, "_probe_patch", lambda patch, divisor: tuple(patch))
    full = memory.estimate_training_memory(method, cfg, 2)
    assert scaled.probe_patch == (32, 32, 32) and full.probe_patch == (64, 32, 32)
    assert abs(scaled.total - full.total) / full.total < 0.15


def test_too_big_raises_with_settings_that_fit(monkeypatch):
    cfg = _cfg(patch=(64, 64, 32), labeled_batch=2, unlabeled_batch=2)
    method = build_method(cfg, 2)
    est = memory.estimate_training_memory(method, cfg, 2)
    monkeypatch.setenv("SEMISUP_MEMORY_LIMIT_GIB", str(est.total / 4 / memory.GIB))
    with pytest.raises(ConfigError) as info:
        memory.check_training_memory(method, cfg, 2, torch.device("cpu"))
    msg = str(info.value)
    assert "out of memory on cpu" in msg and "GiB" in msg
    patch = [int(v) for v in re.search(r"data\.patch_size \[([0-9, ]+)\]", msg.split("try")[1]).group(1).split(",")]
    assert all(p % 16 == 0 and p <= q for p, q in zip(patch, (64, 64, 32))) and patch != [64, 64, 32]
    assert "train.labeled_batch 1 and train.unlabeled_batch 1" in msg
    assert "method.params.mc_samples" in msg


def test_fits_returns_the_estimate_and_small_runs_skip_the_probe(monkeypatch):
    monkeypatch.delenv("SEMISUP_MEMORY_LIMIT_GIB", raising=False)
    cfg = _cfg(patch=(64, 32, 32))
    est = memory.check_training_memory(build_method(cfg, 2), cfg, 2, torch.device("cpu"))
    assert est is not None and est.total < 2 * memory.GIB
    small = _cfg(patch=(32, 32, 16))  # no larger than the probe: not probed on the CPU
    assert memory.check_training_memory(build_method(small, 2), small, 2, torch.device("cpu")) is None


def test_oom_in_the_step_becomes_a_config_error_with_suggestions(dataset, tmp_path, monkeypatch):
    cfg = _cfg(iterations=3)
    cfg.data.dataset = str(dataset)
    from semisup.methods.uamt import UAMT

    def boom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setenv("SEMISUP_MEMORY_CHECK", "0")
    monkeypatch.setattr(UAMT, "training_step", boom)
    with pytest.raises(ConfigError, match=r"out of memory on cpu: data.patch_size \[32, 32, 16\]"):
        Trainer(cfg, tmp_path / "run").fit()


def test_cli_refuses_a_run_that_cannot_fit(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    raw = _cfg(patch=(64, 64, 32)).to_dict()
    raw["data"]["dataset"] = str(dataset)
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": "1",
           "SEMISUP_MEMORY_LIMIT_GIB": "0.0001"}
    proc = subprocess.run([sys.executable, "-m", "semisup", "train", "--run-dir", str(run), "--progress", "json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events[-1]["event"] == "error" and events[-1]["type"] == "ConfigError"
    assert "out of memory on cpu" in events[-1]["message"] and "try" in events[-1]["message"]
    assert not (run / "checkpoints" / "last.pt").exists()
