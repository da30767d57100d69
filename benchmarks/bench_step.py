#!/usr/bin/env python3
"""Training-step benchmark: the library's step against a straightforward reference step.

For each method (UA-MT, UCMT) and setting, one process builds the method's networks
once and times, interleaved (reference, variant 1, variant 2, ... per repetition,
so that load from other jobs hits all of them alike), full training steps: forward,
backward, optimizer step and EMA teacher update, on the same fixed batch.

Reference step (written out below, like the authors' code): fp32, contiguous
tensors, no autocast; UA-MT's T uncertainty passes in a Python loop (as the UA-MT
code: the consistency batch stacked twice, T/2 passes; ``--ref-stack 1`` gives T
passes of the plain batch); UCMT with per-sample Python loops for UMIX.

Library step: ``method.training_step`` then the engine's backward / optimizer /
``after_optimizer_step``, with the perf switches of each variant:
  fp32      fp32, contiguous (UA-MT: the 1 + T teacher passes as one batched forward)
  cl        + channels-last 3D weights and inputs (train.channels_last)
  bf16      + autocast bf16 (CUDA: train.amp; CPU: train.amp_cpu)
  cl+bf16   both

Loss check (before timing). The two steps are made comparable by switching off
what is random in them: dropout off (the networks are built with ``dropout=False``)
and a FIXED teacher input perturbation (one clamped Gaussian field drawn once and
added to every teacher pass, in both implementations). Then every teacher pass sees
the same input, so the BatchNorm batch statistics of a batched 36-volume teacher
pass equal those of the reference's 4- or 8-volume passes, and the two steps
compute the same function. Both start from identical weights and run
``--check-steps`` consecutive steps (so the optimizer and the EMA are checked too);
the losses of every step must agree within ``--rtol`` (fp32 variants, default
1e-4) or ``--rtol-amp`` (bf16 variants, default 5e-2, bf16 has 8 mantissa bits).
With dropout and fresh noise the two steps draw different random numbers by
construction (one batched draw vs T draws), so their losses are only equal in
distribution; timing uses that real stochastic configuration.

FLOPs of one step (forward + backward + teacher passes) come from
``torch.utils.flop_counter.FlopCounterMode``; the compute floor is FLOPs divided by
the device's measured dense matmul throughput (a 4096^2 matmul, fp32 and bf16).

Examples::

    python benchmarks/bench_step.py --setting cpu --methods uamt ucmt --reps 5 --json runs/bench_step_cpu.json
    python benchmarks/bench_step.py --setting paper --methods uamt --reps 1 --warmup 0 --variants cl+bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SemiSupUncertainty"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from semisup.config import DataConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig  # noqa: E402
from semisup.methods import build_method  # noqa: E402
import semisup.methods.uamt as uamt_module  # noqa: E402
from harness import matmul_tflops, run_header, write_json  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    # The CPU setting of benchmarks/bench_la.py: what a user trains on a workstation CPU.
    "cpu": {"base_filters": 8, "patch": [64, 64, 32], "labeled": 2, "unlabeled": 2, "mc_samples": 4},
    # UA-MT paper: V-Net 16 filters, 112 x 112 x 80, 2 + 2, T = 8.
    "paper": {"base_filters": 16, "patch": [112, 112, 80], "labeled": 2, "unlabeled": 2, "mc_samples": 8},
}
VARIANTS = ("fp32", "cl", "bf16", "cl+bf16")
NUM_CLASSES = 2  # LA: binary
MAX_STEPS = 6000  # UA-MT schedule; the check runs at full consistency weight


# ----------------------------------------------------------------------------- inputs


def make_batch(setting: dict, device: torch.device, seed: int) -> tuple[dict, dict]:
    """A fixed labeled + unlabeled batch: smooth random blobs as labels, image = label + noise."""
    g = torch.Generator().manual_seed(seed)
    n = setting["labeled"] + setting["unlabeled"]
    shape = (n, 1, *setting["patch"])
    blobs = F.avg_pool3d(torch.randn(shape, generator=g), 9, stride=1, padding=4)
    label = (blobs > blobs.flatten(1).quantile(0.8, dim=1).view(-1, 1, 1, 1, 1)).long()
    image = label.float() + 0.5 * torch.randn(shape, generator=g)
    b = setting["labeled"]
    labeled = {"image": image[:b].to(device), "label": label[:b].to(device)}
    unlabeled = {"image": image[b:].to(device)}
    return labeled, unlabeled


def run_config(method: str, setting: dict, dropout: bool) -> RunConfig:
    params = {"mc_samples": setting["mc_samples"]} if method == "uamt" else {}
    return RunConfig(
        data=DataConfig(patch_size=list(setting["patch"])),
        network=NetworkConfig(name="vnet", base_filters=setting["base_filters"], dropout=dropout),
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(labeled_batch=setting["labeled"], unlabeled_batch=setting["unlabeled"]),
    )


def optimizer_for(method: str, params) -> torch.optim.Optimizer:
    # UA-MT: SGD 0.01 / 0.9 / 1e-4 (paper); UCMT: AdamW 1e-4 (paper). Same for both steps.
    if method == "ucmt":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


# ----------------------------------------------------------------------------- reference


def ramp(current: float, length: float) -> float:
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(current / length, 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


def ref_noise(x: torch.Tensor, std: float, clip: float, fixed: torch.Tensor | None) -> torch.Tensor:
    if fixed is not None:
        return x + fixed.repeat(x.shape[0] // fixed.shape[0], *([1] * (x.ndim - 1)))
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


def ref_dice_foreground(prob_fg: torch.Tensor, target_fg: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """UA-MT code ``losses.dice_loss``: one ratio over the whole batch."""
    target_fg = target_fg.float()
    intersect = torch.sum(prob_fg * target_fg)
    return 1 - (2 * intersect + smooth) / (torch.sum(prob_fg * prob_fg) + torch.sum(target_fg * target_fg) + smooth)


def ref_dice_per_sample(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """UCMT's soft Dice: per sample and class, background included, squared denominators."""
    prob = F.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target[:, 0].long(), prob.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, prob.ndim))
    inter = (prob * onehot).sum(dims)
    den = (prob * prob).sum(dims) + (onehot * onehot).sum(dims)
    return (1 - (2 * inter + smooth) / (den + smooth)).mean()


def ref_entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.sum(p * torch.log(p + 1e-6), dim=1, keepdim=True)


@torch.no_grad()
def ref_ema(teacher, students, weights, alpha: float, step: int) -> None:
    """Authors' ``update_ema_variables``: parameters only, warm-up decay."""
    a = min(1 - 1 / (step + 1), alpha)
    for i, tp in enumerate(teacher.parameters()):
        mixed = sum(w * list(s.parameters())[i].data for w, s in zip(weights, students))
        tp.data.mul_(a).add_(mixed, alpha=1 - a)


class ReferenceUAMT:
    """UA-MT step as in the authors' ``train_LA.py``, generalised to the library's options."""

    def __init__(self, lib_method, setting: dict, stack: int) -> None:
        self.student = copy.deepcopy(lib_method.student)
        self.teacher = copy.deepcopy(lib_method.teacher)
        self.p = lib_method.params
        self.opt = optimizer_for("uamt", self.student.parameters())
        self.stack = stack
        self.fixed_noise: torch.Tensor | None = None

    def step(self, labeled, unlabeled, it: int) -> dict[str, float]:
        p = self.p
        x_l, y_l, x_u = labeled["image"], labeled["label"], unlabeled["image"]
        b_l = x_l.shape[0]
        x = torch.cat([x_l, x_u])
        outputs = self.student(x)
        loss_ce = F.cross_entropy(outputs[:b_l], y_l[:, 0])
        outputs_soft = F.softmax(outputs, dim=1)
        loss_dice = ref_dice_foreground(outputs_soft[:b_l, 1], y_l[:, 0] == 1)
        supervised = 0.5 * (loss_ce + loss_dice)

        x_c = x if p.consistency_on_labeled else x_u
        b_c = x_c.shape[0]
        with torch.no_grad():
            ema_output = self.teacher(ref_noise(x_c, p.noise_std, p.noise_clip, self.fixed_noise))
            volume_batch_r = x_c.repeat(self.stack, 1, 1, 1, 1)
            preds = []
            for _ in range(p.mc_samples // self.stack):  # the Python loop of the reference code
                preds.append(self.teacher(ref_noise(volume_batch_r, p.noise_std, p.noise_clip, self.fixed_noise)))
            preds = F.softmax(torch.cat(preds), dim=1)
            preds = preds.reshape(p.mc_samples, b_c, *preds.shape[1:]).mean(dim=0)
            uncertainty = ref_entropy(preds)

        weight = p.consistency * ramp(it // p.iterations_per_epoch, p.consistency_rampup)
        top = math.log(2.0) if p.u_max == "ln2" else math.log(NUM_CLASSES)
        threshold = (p.threshold_start + (1 - p.threshold_start) * ramp(it, MAX_STEPS)) * top
        cons_student = outputs_soft if p.consistency_on_labeled else outputs_soft[b_l:]
        dist = (cons_student - F.softmax(ema_output, dim=1)) ** 2
        mask = (uncertainty < threshold).float()
        consistency = torch.sum(mask * dist) / (NUM_CLASSES * torch.sum(mask) + 1e-16)
        loss = supervised + weight * consistency
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        ref_ema(self.teacher, [self.student], [1.0], p.ema_alpha, it)
        return {"loss": loss.item(), "sup": supervised.item(), "consistency": consistency.item()}

    def networks(self):
        return {"student": self.student, "teacher": self.teacher}


def ref_umix(x: torch.Tensor, y: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, k: int, grid: int):
    """UMIX with Python loops over samples and patches (straightforward version of the code)."""
    x, y = x.clone(), y.clone()
    spatial = x.shape[2:]
    p = [s // grid for s in spatial]
    n = grid ** len(spatial)

    def means(u: torch.Tensor) -> torch.Tensor:
        return u.float().reshape(grid, p[0], grid, p[1], grid, p[2]).mean(dim=(1, 3, 5)).flatten()

    def window(index: int):
        i0, rest = divmod(index, grid * grid)
        i1, i2 = divmod(rest, grid)
        return (slice(None), slice(i0 * p[0], (i0 + 1) * p[0]), slice(i1 * p[1], (i1 + 1) * p[1]),
                slice(i2 * p[2], (i2 + 1) * p[2]))

    for b in range(x.shape[0]):
        o1 = torch.sort(means(u1[b, 0]), descending=True, stable=True).indices.tolist()
        o2 = torch.sort(means(u2[b, 0]), descending=True, stable=True).indices.tolist()
        for dst_order, src_order in ((o1, o2), (o2, o1)):
            for arr in (x, y):
                sources = [arr[b][window(src_order[n - k + j])].clone() for j in range(k)]
                for j in range(k):
                    arr[b][window(dst_order[j])] = sources[j]
    return x, y


class ReferenceUCMT:
    """UCMT step (both of Algorithm 1's steps, one optimizer step) written out plainly."""

    def __init__(self, lib_method, setting: dict, stack: int) -> None:
        self.s1 = copy.deepcopy(lib_method.student1)
        self.s2 = copy.deepcopy(lib_method.student2)
        self.teacher = copy.deepcopy(lib_method.teacher)
        self.p = lib_method.params
        self.grid = 8 if self.p.grid is None else int(self.p.grid)
        self.opt = optimizer_for("ucmt", [*self.s1.parameters(), *self.s2.parameters()])
        self.fixed_noise = None

    def _losses(self, s1, s2, y_l, y0_u, b_l):
        sup = ref_dice_per_sample(s1[:b_l], y_l) + ref_dice_per_sample(s2[:b_l], y_l)
        u1, u2 = s1[b_l:], s2[b_l:]
        cps = ref_dice_per_sample(u1, u2.detach().argmax(1, keepdim=True)) + ref_dice_per_sample(
            u2, u1.detach().argmax(1, keepdim=True)
        )
        mts = ref_dice_per_sample(u1, y0_u) + ref_dice_per_sample(u2, y0_u)
        return sup, cps, mts

    def step(self, labeled, unlabeled, it: int) -> dict[str, float]:
        p = self.p
        x_l, y_l, x_u = labeled["image"], labeled["label"], unlabeled["image"]
        b_l = x_l.shape[0]
        x = torch.cat([x_l, x_u])
        length = p.rampup_epochs * p.iterations_per_epoch if p.rampup_epochs is not None else MAX_STEPS
        weight = p.unsup_weight * ramp(it, length)
        s1, s2 = self.s1(x), self.s2(x)
        with torch.no_grad():
            t = self.teacher(x)
        y0 = t.argmax(1, keepdim=True)
        sup, cps, mts = self._losses(s1, s2, y_l, y0[b_l:], b_l)
        loss = sup + weight * (cps + mts)
        with torch.no_grad():
            pt = F.softmax(t, dim=1)
            u1 = ref_entropy(0.5 * (F.softmax(s1, dim=1) + pt))
            u2 = ref_entropy(0.5 * (F.softmax(s2, dim=1) + pt))
            x_mix, y_mix = ref_umix(x, torch.cat([y_l, y0[b_l:]]), u1, u2, p.k, self.grid)
        s1m, s2m = self.s1(x_mix), self.s2(x_mix)
        sup_m, cps_m, mts_m = self._losses(s1m, s2m, y_mix[:b_l], y_mix[b_l:], b_l)
        loss = loss + sup_m + weight * (cps_m + mts_m)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        ref_ema(self.teacher, [self.s1, self.s2], [0.5, 0.5], p.ema_alpha, it)
        return {"loss": loss.item(), "sup": sup.item(), "cps": cps.item(), "mts": mts.item()}

    def networks(self):
        return {"student1": self.s1, "student2": self.s2, "teacher": self.teacher}


REFERENCES = {"uamt": ReferenceUAMT, "ucmt": ReferenceUCMT}


# ----------------------------------------------------------------------------- library


class LibraryStep:
    """The engine's inner loop (semisup.engine.trainer) on one method, with a variant's switches."""

    def __init__(self, lib_method, method_name: str, variant: str, device: torch.device) -> None:
        self.method = copy.deepcopy(lib_method)
        self.channels_last = "cl" in variant.split("+")
        self.amp = "bf16" in variant
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last_3d)
        self.opt = optimizer_for(method_name, list(self.method.trainable_parameters()))
        self.device = device
        self.method.train()

    def _prep(self, batch: dict) -> dict:
        if not self.channels_last:
            return batch
        return {k: v.contiguous(memory_format=torch.channels_last_3d) if torch.is_tensor(v) and v.ndim == 5 else v
                for k, v in batch.items()}

    def step(self, labeled, unlabeled, it: int, sync_logs: bool = False) -> dict[str, float] | None:
        labeled, unlabeled = self._prep(labeled), self._prep(unlabeled)
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            out = self.method.training_step(labeled, unlabeled, it, MAX_STEPS)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.method.after_optimizer_step(it)
        if not sync_logs:
            return None
        return {"loss": float(out.loss.detach()), **{k: float(v) for k, v in out.logs.items()}}

    def networks(self):
        return dict(self.method.named_children())


# ----------------------------------------------------------------------------- measurements


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def meta_flops(method_name: str, setting: dict) -> int:
    """FLOPs of one library step counted on the meta device: no memory, no compute.

    For settings too large to run here; at the CPU setting it equals the count of a
    real step (and the reference step's count equals the library's).
    """
    method = build_method(run_config(method_name, setting, dropout=True), NUM_CLASSES).to("meta")
    labeled = {"image": torch.empty(setting["labeled"], 1, *setting["patch"], device="meta"),
               "label": torch.zeros(setting["labeled"], 1, *setting["patch"], dtype=torch.long, device="meta")}
    unlabeled = {"image": torch.empty(setting["unlabeled"], 1, *setting["patch"], device="meta")}

    def step() -> None:
        method.training_step(labeled, unlabeled, MAX_STEPS // 2, MAX_STEPS).loss.backward()

    return count_flops(step)


def fixed_noise_for(method, labeled, unlabeled, seed: int) -> torch.Tensor:
    p = method.params
    x_c = torch.cat([labeled["image"], unlabeled["image"]]) if p.consistency_on_labeled else unlabeled["image"]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x_c.shape, generator=g).to(x_c.device)
    return torch.clamp(noise * p.noise_std, -p.noise_clip, p.noise_clip)


def check_losses(method_name: str, setting: dict, variants: list[str], device, args) -> dict[str, Any]:
    """Deterministic comparison (dropout off, fixed teacher perturbation); see the module doc."""
    torch.manual_seed(args.seed)
    lib = build_method(run_config(method_name, setting, dropout=False), NUM_CLASSES).to(device)
    labeled, unlabeled = make_batch(setting, device, args.seed)
    fixed = fixed_noise_for(lib, labeled, unlabeled, args.seed + 1) if method_name == "uamt" else None
    steps = [MAX_STEPS // 2 + i for i in range(args.check_steps)]  # past the ramps: full weights
    ref = REFERENCES[method_name](lib, setting, args.ref_stack)
    ref.fixed_noise = fixed
    ref_losses = [ref.step(labeled, unlabeled, it) for it in steps]
    original = uamt_module.add_clamped_noise
    if fixed is not None:
        uamt_module.add_clamped_noise = lambda x, std, clip: ref_noise(x, std, clip, fixed)
    out: dict[str, Any] = {"reference": ref_losses, "variants": {}}
    try:
        for variant in variants:
            step = LibraryStep(lib, method_name, variant, device)
            losses = [step.step(labeled, unlabeled, it, sync_logs=True) for it in steps]
            rtol = args.rtol_amp if "bf16" in variant else args.rtol
            worst = max(abs(l["loss"] - r["loss"]) / max(abs(r["loss"]), 1e-12) for l, r in zip(losses, ref_losses))
            ref_nets, lib_nets = ref.networks(), step.networks()
            param_diff = max(
                (a.detach().float() - b.detach().float()).abs().max().item()
                for name in ref_nets
                for a, b in zip(ref_nets[name].parameters(), lib_nets[name].parameters())
            )
            out["variants"][variant] = {
                "losses": losses,
                "max_rel_loss_diff": worst,
                "rtol": rtol,
                "ok": worst <= rtol,
                "max_abs_param_diff_after": param_diff,
            }
    finally:
        uamt_module.add_clamped_noise = original
    return out


def time_steps(method_name: str, setting: dict, variants: list[str], device, args) -> dict[str, Any]:
    """Interleaved timing of the reference and each variant in the real (stochastic) configuration."""
    torch.manual_seed(args.seed)
    lib = build_method(run_config(method_name, setting, dropout=True), NUM_CLASSES).to(device)
    labeled, unlabeled = make_batch(setting, device, args.seed)
    runners: dict[str, Any] = {"reference": REFERENCES[method_name](lib, setting, args.ref_stack)}
    for v in variants:
        runners[v] = LibraryStep(lib, method_name, v, device)
    it = MAX_STEPS // 2
    result: dict[str, Any] = {}
    flops_ref = count_flops(lambda: runners["reference"].step(labeled, unlabeled, it))
    flops_lib = count_flops(lambda: runners[variants[0]].step(labeled, unlabeled, it)) if variants else None
    result["flops"] = {"reference": flops_ref, "library": flops_lib}
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    for rep in range(args.warmup + args.reps):
        for name, runner in runners.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            runner.step(labeled, unlabeled, it)
            sync(device)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)
        print(f"  {method_name} rep {rep + 1}/{args.warmup + args.reps}: "
              + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items() if t), file=sys.stderr, flush=True)
    result["seconds"] = times
    result["median_s"] = {n: statistics.median(t) for n, t in times.items() if t}
    # CPU seconds of all threads of this process: on a shared machine, waiting for a
    # core inflates wall time but not this (spinning OpenMP threads still count).
    result["cpu_seconds"] = cpu_times
    result["median_cpu_s"] = {n: statistics.median(t) for n, t in cpu_times.items() if t}
    if device.type == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["host_device_syncs_per_step"] = count_syncs(runners[variants[-1]], labeled, unlabeled, it)
    return result


def count_syncs(runner, labeled, unlabeled, it) -> int:
    """Host-device synchronisations in one library step (CUDA sync debug mode warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.step(labeled, unlabeled, it)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def markdown(report: dict) -> str:
    lines = []
    tp = report["matmul_tflops"]
    for m, r in report["methods"].items():
        t, chk = r["timing"], r["check"]
        flops = t["flops"]["reference"]
        ref_s = t["median_s"]["reference"]
        lines.append(f"\n{m} ({report['setting']}: {json.dumps(report['setting_values'])}), step FLOPs "
                     f"{flops / 1e12:.3f} TFLOP (library {(t['flops']['library'] or 0) / 1e12:.3f})\n")
        ref_c = t["median_cpu_s"]["reference"]
        lines.append("| step | median wall s | reference / this (wall) | median CPU s | reference / this (CPU) "
                     "| compute floor s (FLOPs / matmul rate) | loss check (max rel diff, tol) |")
        lines.append("|---|---|---|---|---|---|---|")
        lines.append(f"| reference (fp32, loop) | {ref_s:.3f} | 1.00 | {ref_c:.3f} | 1.00 | "
                     f"{flops / (tp['fp32'] * 1e12):.3f} | - |")
        for v, s in t["median_s"].items():
            if v == "reference":
                continue
            rate = tp["bf16"] if "bf16" in v else tp["fp32"]
            c = chk["variants"].get(v)
            check = f"{c['max_rel_loss_diff']:.1e} <= {c['rtol']:.0e} {'ok' if c['ok'] else 'FAIL'}" if c else "n/a"
            c_s = t["median_cpu_s"][v]
            lines.append(f"| library {v} | {s:.3f} | {ref_s / s:.2f} | {c_s:.3f} | {ref_c / c_s:.2f} | "
                         f"{flops / (rate * 1e12):.3f} | {check} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    ap.add_argument("--methods", nargs="+", default=["uamt", "ucmt"], choices=sorted(REFERENCES))
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: all four")
    ap.add_argument("--mc-samples", type=int, help="override the setting's T")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--check-steps", type=int, default=2, help="consecutive steps in the loss check (0: skip)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="loss tolerance, fp32 variants")
    ap.add_argument("--rtol-amp", type=float, default=5e-2, help="loss tolerance, bf16 variants")
    ap.add_argument("--ref-stack", type=int, default=2, help="reference: copies per teacher pass (UA-MT code: 2)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the full report here")
    ap.add_argument("--flops-only", action="store_true",
                    help="only count the step's FLOPs (meta device) and print compute floors at the measured rates")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    setting = dict(SETTINGS[args.setting])
    if args.mc_samples:
        setting["mc_samples"] = args.mc_samples
    if setting["mc_samples"] % args.ref_stack:
        raise SystemExit(f"T = {setting['mc_samples']} is not a multiple of --ref-stack {args.ref_stack}")
    variants = list(args.variants or VARIANTS)
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    variants = [v for v in variants if bf16_ok or "bf16" not in v]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    report: dict[str, Any] = {
        **run_header(device),
        "setting": args.setting,
        "setting_values": setting,
        "matmul_tflops": {"fp32": matmul_tflops(device, torch.float32), "bf16": matmul_tflops(device, torch.bfloat16)},
        "methods": {},
    }
    print(f"device {report['device']}, matmul TFLOP/s {report['matmul_tflops']}", file=sys.stderr, flush=True)
    if args.flops_only:
        tp = report["matmul_tflops"]
        print(f"\n{args.setting} setting {json.dumps(setting)}, {report['device']}\n")
        print("| method | step TFLOP | compute floor s (fp32 rate) | compute floor s (bf16 rate) |")
        print("|---|---|---|---|")
        for m in args.methods:
            f = meta_flops(m, setting)
            report["methods"][m] = {"flops": f}
            print(f"| {m} | {f / 1e12:.3f} | {f / (tp['fp32'] * 1e12):.2f} | {f / (tp['bf16'] * 1e12):.2f} |")
        if args.json:
            write_json(args.json, report)
        return 0
    for m in args.methods:
        check = check_losses(m, setting, variants, device, args) if args.check_steps > 0 else {"variants": {}}
        for v, c in check["variants"].items():
            print(f"  {m} check {v}: max rel loss diff {c['max_rel_loss_diff']:.2e} (tol {c['rtol']:.0e}) "
                  f"{'ok' if c['ok'] else 'FAIL'}", file=sys.stderr, flush=True)
        report["methods"][m] = {"check": check, "timing": time_steps(m, setting, variants, device, args)}
    report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    text = markdown(report)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, report)
    failed = [f"{m}/{v}" for m, r in report["methods"].items() for v, c in r["check"]["variants"].items() if not c["ok"]]
    if failed:
        print(f"loss check FAILED for {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
