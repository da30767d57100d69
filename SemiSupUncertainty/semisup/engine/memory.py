"""Will the training step fit in memory? An estimate before training, a clear message after an OOM.

The estimate runs the method's real ``training_step`` and backward once, on a copy
of the method on the training device, at a small probe patch (each axis at most
``2 x divisor``, i.e. 32 for the V-Net and U-Nets; the whole patch when it is
smaller), with the run's batch sizes and method parameters (T MC passes and all),
and records the peak of live tensor bytes through a ``TorchDispatchMode``.
Activations grow with the number of voxels, so they are scaled by
``patch voxels / probe voxels``; weights, gradients and optimizer state are added as
they are. That covers every method without a per-method formula. It leaves out the
convolution libraries' workspaces and allocator fragmentation, hence the
``HEADROOM`` margin when comparing with the free memory.

On the CPU a run whose patch is no larger than the probe patch is not probed: it is
small, and its first real step would show a problem as fast as the probe.

Environment: ``SEMISUP_MEMORY_CHECK=0`` switches the check off;
``SEMISUP_MEMORY_LIMIT_GIB=X`` caps the memory a run may count on (a shared
workstation: leave room for others).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.multiprocessing.reductions import StorageWeakRef

from ..config import ConfigError, RunConfig

__all__ = [
    "MemoryEstimate",
    "estimate_training_memory",
    "check_training_memory",
    "oom_message",
    "oom_error",
    "free_memory",
    "peak_memory_gib",
]

log = logging.getLogger(__name__)

GIB = 2**30
#: Fraction of the free memory the estimate may use (workspaces, fragmentation, the loader).
HEADROOM = 0.85
#: Optimizer state tensors per trainable parameter.
OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2}


@dataclass
class MemoryEstimate:
    """Peak memory of one training step, in bytes.

    Attributes
    ----------
    activations:
        Tensors created during the step (activations, saved tensors, temporaries),
        scaled to the training patch.
    fixed:
        Weights of every network, gradients and optimizer state.
    probe_patch:
        The patch the probe ran at.
    """

    activations: float
    fixed: float
    probe_patch: tuple[int, ...]

    @property
    def total(self) -> float:
        return self.activations + self.fixed

    @property
    def total_gib(self) -> float:
        return self.total / GIB


class _PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the mode and still alive."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self._live:
                    nbytes = storage.nbytes()
                    self._live[ref.cdata] = (ref, nbytes)
                    self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def _probe_patch(patch: list[int], divisor: int) -> tuple[int, ...]:
    return tuple(min(int(p), 2 * divisor) for p in patch)


def _batch(
    n: int, patch: tuple[int, ...], num_classes: int, labeled: bool, device: torch.device, channels: int = 1
) -> dict[str, Any]:
    out: dict[str, Any] = {"image": torch.randn(n, channels, *patch, device=device), "name": [f"probe{i}" for i in range(n)]}
    if labeled:
        out["label"] = torch.randint(0, num_classes, (n, 1, *patch), device=device)
    return out


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def estimate_training_memory(
    method: nn.Module, cfg: RunConfig, num_classes: int, amp_dtype: torch.dtype | None = None
) -> MemoryEstimate | None:
    """Peak memory of one training step at ``cfg``'s patch and batch, or ``None`` if the probe fails.

    The probe runs where ``method``'s parameters are, under autocast with ``amp_dtype``
    when given (as the training step will). The method itself is not touched (the probe runs on a deep copy) and the global
    RNG state is restored afterwards, so training is unchanged by the check.
    """
    from ..networks.factory import required_divisor

    t = cfg.train
    patch = [int(p) for p in cfg.data.patch_size]
    probe = _probe_patch(patch, required_divisor(cfg.network.name))
    device = _device_of(method)
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        probe_method = copy.deepcopy(method).train()
        channels = int(cfg.data.channels)
        labeled = _batch(t.labeled_batch, probe, num_classes, True, device, channels)
        unlabeled = (
            _batch(t.unlabeled_batch, probe, num_classes, False, device, channels) if t.unlabeled_batch > 0 else None
        )
        if not getattr(probe_method, "uses_unlabeled", True):
            unlabeled = None
        step = max(t.iterations - 1, 0)  # ramps at full weight: every branch of the step runs
        tracker = _PeakLiveBytes()
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with tracker:
            with ctx:
                out = probe_method.training_step(labeled, unlabeled, step, t.iterations)
            out.loss.backward()
        peak = tracker.peak
    except Exception as exc:  # a method the probe cannot drive: no estimate, no false alarm
        log.debug("memory estimate skipped: %s: %s", type(exc).__name__, exc)
        return None
    finally:
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if device.type == "cuda":  # the progress events' peak is the training's, not the probe's
            torch.cuda.reset_peak_memory_stats(device)
    trainable = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in method.parameters())
    buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    scale = math.prod(patch) / math.prod(probe)
    # Gradients are created inside the probe; take them out of what scales with the patch.
    activations = max(peak - trainable, 0) * scale
    fixed = weights + buffers + trainable * (1 + OPTIMIZER_SLOTS.get(t.optimizer, 2))
    return MemoryEstimate(activations=activations, fixed=fixed, probe_patch=probe)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: the CUDA caching allocator's peak on a GPU (no synchronisation), peak RSS on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / GIB, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)  # Linux: KiB


def _device_total(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return min(float(psutil.virtual_memory().total) / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), _limit())


def _limit() -> float:
    value = os.environ.get("SEMISUP_MEMORY_LIMIT_GIB")
    return float(value) * GIB if value else math.inf


def free_memory(device: torch.device) -> float:
    """Bytes this process may still use: free GPU memory, or available RAM shared by the local
    ranks; at most ``SEMISUP_MEMORY_LIMIT_GIB``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(float(free), _limit())
    import psutil

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(float(psutil.virtual_memory().available) / local, _limit())


def _suggestions(cfg: RunConfig, estimate: MemoryEstimate, budget: float) -> list[str]:
    from ..networks.factory import required_divisor

    t, patch = cfg.train, [int(p) for p in cfg.data.patch_size]
    room = budget - estimate.fixed
    if room <= 0:
        return ["a smaller network (network.base_filters) or a device with more memory: the weights alone do not fit"]
    # At most 3/4 of the activations: after a real OOM the estimate was evidently too low.
    ratio = min(room / max(estimate.activations, 1.0), 0.75)
    divisor = required_divisor(cfg.network.name)
    factor = ratio ** (1.0 / len(patch))
    smaller = [max(divisor, int(p * factor) // divisor * divisor) for p in patch]
    out = []
    if smaller != patch:
        out.append(f"data.patch_size {smaller}")
    if t.labeled_batch + t.unlabeled_batch > 2:
        lb = max(1, int(t.labeled_batch * ratio))
        ub = max(1 if t.unlabeled_batch else 0, int(t.unlabeled_batch * ratio))
        if (lb, ub) != (t.labeled_batch, t.unlabeled_batch):
            out.append(f"train.labeled_batch {lb} and train.unlabeled_batch {ub}")
    mc = cfg.method.params.get("mc_samples") if isinstance(cfg.method.params, dict) else None
    if cfg.method.name in ("uamt",):
        out.append(f"method.params.mc_samples {max(2, int((mc or 8) * ratio))} (fewer teacher passes)")
    if not cfg.train.amp:
        out.append("train.amp true (half-precision activations on a GPU)")
    return out


def oom_message(
    cfg: RunConfig, device: torch.device, estimate: MemoryEstimate | None, budget: float | None = None
) -> str:
    """Plain words: what did not fit, and settings that would.

    ``budget`` (bytes usable) defaults to ``HEADROOM`` x the device's total memory.
    """
    if budget is None and estimate is not None:
        budget = _device_total(device) * HEADROOM
    t = cfg.train
    what = (
        f"data.patch_size {list(cfg.data.patch_size)} with batch {t.labeled_batch} labeled + {t.unlabeled_batch} "
        f"unlabeled ({cfg.method.name}, network {cfg.network.name} {cfg.network.base_filters} filters)"
    )
    where = "GPU" if device.type == "cuda" else "RAM"
    if estimate is None or budget is None:
        return (
            f"out of memory on {device}: {what} does not fit; lower data.patch_size (keep it a multiple of 16), "
            "train.labeled_batch / train.unlabeled_batch or method.params.mc_samples"
        )
    tips = _suggestions(cfg, estimate, budget)
    return (
        f"out of memory on {device}: {what} needs about {estimate.total_gib:.1f} GiB of {where} "
        f"({estimate.activations / GIB:.1f} GiB activations + {estimate.fixed / GIB:.1f} GiB weights and optimizer), "
        f"about {budget / GIB:.1f} GiB is usable; try " + ", or ".join(tips)
    )


def oom_error(cfg: RunConfig, device: torch.device, estimate: MemoryEstimate | None) -> ConfigError:
    """The error to raise in place of ``torch.OutOfMemoryError`` (exit code 2, a message with settings that fit)."""
    return ConfigError(oom_message(cfg, device, estimate))


def check_training_memory(
    method: nn.Module, cfg: RunConfig, num_classes: int, device: torch.device, amp_dtype: torch.dtype | None = None
) -> MemoryEstimate | None:
    """Estimate the step's memory and raise :class:`ConfigError` with suggestions when it cannot fit.

    Returns the estimate (``None`` when skipped or not possible) so that it can be reported.
    """
    if os.environ.get("SEMISUP_MEMORY_CHECK", "1") == "0":
        return None
    from ..networks.factory import required_divisor

    patch = [int(p) for p in cfg.data.patch_size]
    if device.type != "cuda" and math.prod(patch) <= math.prod(_probe_patch(patch, required_divisor(cfg.network.name))):
        return None  # small run (tests, demo): the probe would cost as much as a step and tell little
    estimate = estimate_training_memory(method, cfg, num_classes, amp_dtype)
    if estimate is None:
        return None
    budget = free_memory(device) * HEADROOM
    log.info(
        "estimated peak training memory %.2f GiB (%.2f GiB usable on %s)", estimate.total_gib, budget / GIB, device
    )
    if estimate.total > budget:
        raise ConfigError(oom_message(cfg, device, estimate, budget))
    return estimate
