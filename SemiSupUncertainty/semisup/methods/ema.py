"""Exponential moving average teachers."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["init_teacher", "update_ema"]


def init_teacher(teacher: nn.Module) -> nn.Module:
    """Detach a teacher from the optimizer: its weights change only through EMA."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_ema(
    teacher: nn.Module,
    students: Sequence[nn.Module],
    decay: float,
    weights: Sequence[float] | None = None,
    buffers: str = "average",
) -> None:
    """``theta_T <- decay * theta_T + (1 - decay) * sum_i w_i theta_i``.

    Parameters
    ----------
    students:
        One student (mean teacher, UA-MT) or several (UCMT averages its two).
    weights:
        Weights of the students, default equal (UCMT paper: 1/2 each).
    buffers:
        BatchNorm running statistics. ``"average"`` applies the same EMA to the
        floating-point buffers, so the teacher's eval-mode statistics follow the
        weights it holds (the reference code leaves them to the teacher's own
        forward passes, which run on noisy inputs); integer buffers
        (``num_batches_tracked``) are copied from the first student. ``"own"`` keeps
        the reference code's behaviour.
    """
    if weights is None:
        weights = [1.0 / len(students)] * len(students)
    if len(weights) != len(students):
        raise ValueError(f"{len(students)} students but {len(weights)} EMA weights")
    t_params = [tp.detach() for tp in teacher.parameters()]
    s_params = [[sp.detach() for sp in s.parameters()] for s in students]
    with torch.no_grad():
        # One fused update per list (torch._foreach_*), not two kernels and a
        # temporary per tensor: the mixed student, then theta_T + (1 - decay)(mix - theta_T).
        mixed = s_params[0] if weights[0] == 1.0 else torch._foreach_mul(s_params[0], weights[0])
        for w, sp in zip(weights[1:], s_params[1:]):
            mixed = torch._foreach_add(mixed, sp, alpha=w)
        torch._foreach_lerp_(t_params, mixed, 1.0 - decay)
    if buffers == "own":
        return
    if buffers != "average":
        raise ValueError(f"buffers must be 'average' or 'own', got {buffers!r}")
    t_bufs = list(teacher.buffers())
    s_bufs = [list(s.buffers()) for s in students]
    for i, tb in enumerate(t_bufs):
        if tb.is_floating_point():
            mixed = sum(w * sb[i] for w, sb in zip(weights, s_bufs))
            tb.mul_(decay).add_(mixed, alpha=1.0 - decay)
        else:
            tb.copy_(s_bufs[0][i])
