"""Reproducible training (issue 14 item 5): one seed, one thread count -> identical checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semisup.config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.checkpoint import load_checkpoint
from semisup.engine.trainer import Trainer


def _config(dataset: Path) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[16, 16, 16]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="uamt", params={"iterations_per_epoch": 2, "mc_samples": 2}),
        train=TrainConfig(iterations=6, lr=0.05, val_every=100, checkpoint_every=6, log_every=3, seed=7,
                          deterministic=True, threads=1),
        inference=InferenceConfig(mc_samples=2),
    )


def test_two_one_thread_runs_give_identical_checkpoints(tmp_path) -> None:
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=2, unlabeled=2, validation=0, test=0,
                                     shape=(24, 24, 16), seed=4)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    states = []
    for name in ("a", "b"):
        Trainer(_config(dataset), tmp_path / name).fit()
        states.append(load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["method"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:  # bit for bit: every weight, buffer and EMA teacher
        assert torch.equal(states[0][key], states[1][key]), key
    # The run's switches are undone afterwards.
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_threads_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="train.threads"):
        RunConfig.from_dict({"train": {"threads": 0}})


def test_validation_never_changes_the_trained_weights(tmp_path) -> None:
    """Validating every 2 iterations or never in between gives the same last.pt: validation draws
    from a forked random state and leaves the data streams alone, so a benchmark may validate
    rarely (only best.pt and its choice depend on val_every)."""
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=2, unlabeled=2, validation=1, test=0,
                                     shape=(24, 24, 16), seed=4)
    states = []
    for name, val_every in (("often", 2), ("at_the_end", 6)):
        cfg = _config(dataset)
        cfg.train.val_every = val_every
        Trainer(cfg, tmp_path / name).fit()
        states.append(load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["method"])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
