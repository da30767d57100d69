#!/usr/bin/env python3
"""The library's training step and inference next to the authors' own code, in one process.

The authors' code is NOT part of this repository (neither repository has a licence).
Clone it into a folder of your own and pass that folder as ``--authors-dir``::

    mkdir -p ~/authors && cd ~/authors
    git clone https://github.com/yulequan/UA-MT   # code/ checked at 80d0a34
    git clone https://github.com/Senyh/UCMT       # checked at 6718f6a
    python benchmarks/bench_vs_authors.py --authors-dir ~/authors --threads 1 --reps 7

What runs of theirs, and how
----------------------------
Imported unchanged, from their files:

- UA-MT ``code/networks/vnet.py`` (``VNet``), ``code/utils/losses.py`` (``dice_loss``,
  ``softmax_mse_loss``), ``code/utils/ramps.py`` (``sigmoid_rampup``) when present,
  ``code/test_util.py`` (``test_single_case``, the sliding window of ``test_LA.py``);
- UCMT ``models/vnet.py`` (``VNetorg``), ``models/deeplabv3.py`` (the ``VNet`` wrapper
  with ``weighted_update``, the teacher EMA), ``utils/loss_functions.py`` (``DSCLoss``),
  ``utils/ramps.py`` when present; ``unfoldNd`` (PyPI) for their UMIX.

Their training steps are the bodies of script loops, not functions: the benchmark
reads the loop body from their script (by its first and last statement; the report
records the line numbers) and runs it with ``exec`` in a namespace holding the
objects their script would have built:

- UA-MT: ``code/train_LA_meanteacher_certainty_unlabel.py``, from
  ``volume_batch, label_batch = sampled_batch['image'], ...`` through
  ``update_ema_variables(model, ema_model, args.ema_decay, iter_num)`` (lines 142-182 at
  80d0a34), with their ``get_current_consistency_weight`` and ``update_ema_variables``
  (read with ``ast``) and their ``create_model`` statements. Changed in the text: ``T = 8``
  and ``112, 112, 80`` become the setting's T and patch; ``n_filters`` is the setting's
  (their script uses the default 16); the ``.item()`` reads of their ``logging.info`` line
  follow the block (tensorboard writes are outside it).
- UCMT: ``train_3d.py``, from the first ``optimizer1.zero_grad()`` through the second
  ``teacher.weighted_update(...)`` (both of its steps, two optimizer steps; lines
  176-327 at 6718f6a). Each student's augmented views ``imageA1/imageA2``,
  ``uimageA1/uimageA2`` are the plain batch (the library has one view; equal work); the
  labeled and unlabeled batch sizes are the setting's (their loaders use 4 + 4); their
  ``VNet`` wrapper fixes ``n_filters=16``, so its ``.net`` is rebuilt with their
  ``VNetorg`` at the setting's filters; ``init_weight`` (``utils/model_init.py``) is
  skipped (weights are copied between the implementations anyway); their tensorboard
  writer and logger accept calls and write nothing.

``.cuda()`` calls in their code run under a shim that makes ``Tensor.cuda`` and
``Module.cuda`` the identity when ``--device cpu``. Modules their files import but
the benchmark never calls are stubbed when not installed (UCMT
``models.networkLib.segmodels``, the 2D DeepLab backbones; ``h5py``, ``nibabel``,
``medpy`` in ``test_util.py``).

Equal work
----------
Same batch (fixed, ``labeled + unlabeled`` volumes), same network (2.36 M parameters
at 8 filters, identical module names: weights are copied), same T, and the teacher
sees what their script's teacher sees: UA-MT on the unlabeled images only
(``consistency_on_labeled: false`` here), UCMT on labeled and unlabeled images.

Loss check (UA-MT, before timing): dropout off in both networks and one fixed
clamped Gaussian teacher perturbation for every teacher pass in both (their
``torch.randn_like`` noise and the library's ``add_clamped_noise`` replaced by it), so
both compute the same function from the same weights; ``--check-steps`` consecutive
steps, every loss must agree within ``--rtol`` (fp32) or ``--rtol-amp`` (bf16).
UCMT: their step is a different computation by design (students run the labeled
and unlabeled halves as separate BatchNorm batches, two optimizer steps per
iteration, non-squared Dice denominators, losses halved); the check copies the
weights, verifies the three networks give the same logits (eval mode), and
reports both first-iteration losses side by side.

Timing: process CPU time (all threads of this process; waiting for a core on a
shared machine does not inflate it) and wall time per step, medians over ``--reps``
repetitions run interleaved (authors, ours fp32, ours cl, ...) after ``--warmup``.

Examples::

    python benchmarks/bench_vs_authors.py --authors-dir /work/authors --threads 1 --reps 7
    python benchmarks/bench_vs_authors.py --authors-dir /work/authors --inference --threads 1 --reps 3
    python benchmarks/bench_vs_authors.py --authors-dir ~/authors --device cuda --setting paper --reps 10 --inference
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import math
import statistics
import sys
import textwrap
import time
import types
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SemiSupUncertainty"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Files of theirs each part needs, relative to ``--authors-dir`` (the git clones).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "uamt": ("UA-MT/code/networks/vnet.py", "UA-MT/code/utils/losses.py",
             "UA-MT/code/train_LA_meanteacher_certainty_unlabel.py"),
    "ucmt": ("UCMT/models/vnet.py", "UCMT/models/deeplabv3.py", "UCMT/utils/loss_functions.py", "UCMT/train_3d.py"),
    "inference": ("UA-MT/code/networks/vnet.py", "UA-MT/code/test_util.py"),
}
CLONE_HINT = ("git clone https://github.com/yulequan/UA-MT and git clone https://github.com/Senyh/UCMT "
              "into that folder (see docs/benchmarks.md, 'Against the authors' code')")
SETTINGS: dict[str, dict[str, Any]] = {
    # The CPU setting of benchmarks/bench_la.py and bench_step.py.
    "cpu": {"base_filters": 8, "patch": [64, 64, 32], "labeled": 2, "unlabeled": 2, "mc_samples": 4},
    # UA-MT paper / their script: V-Net 16 filters, 112 x 112 x 80, 2 + 2, T = 8.
    "paper": {"base_filters": 16, "patch": [112, 112, 80], "labeled": 2, "unlabeled": 2, "mc_samples": 8},
}
VARIANTS = ("fp32", "cl", "bf16", "cl+bf16")
MAX_ITERATIONS = 6000  # UA-MT script --max_iterations
UCMT_ITERS_PER_EPOCH = 20  # UCMT train_3d.py: 80 LA volumes / --batch_size 4


def missing_files(authors_dir: Path, parts: list[str]) -> list[str]:
    """Files of :data:`REQUIRED_FILES` for ``parts`` that are not under ``authors_dir``."""
    needed = dict.fromkeys(f for p in parts for f in REQUIRED_FILES[p])
    return [f for f in needed if not (Path(authors_dir) / f).is_file()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-dir", type=Path, required=True,
                    help="folder holding the clones UA-MT/ and UCMT/ (outside this repository)")
    ap.add_argument("--methods", nargs="*", default=["uamt", "ucmt"], choices=["uamt", "ucmt"])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["fp32", "cl", "cl+bf16"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--check-steps", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--rtol-amp", type=float, default=5e-2)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inference", action="store_true", help="also time whole-volume inference (test_util.py)")
    ap.add_argument("--inference-only", action="store_true")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "LA2018")
    ap.add_argument("--case", type=int, default=0)
    ap.add_argument("--inference-reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.check_steps < 0:
        ap.error("--reps must be >= 1, --warmup and --check-steps >= 0")
    return args


def parts_of(args: argparse.Namespace) -> list[str]:
    parts = [] if args.inference_only else list(args.methods)
    return parts + (["inference"] if args.inference or args.inference_only else [])


# ----------------------------------------------------------------------------- loading theirs


@contextmanager
def cuda_shim(device):
    """``.cuda()`` as the identity, for their code on a CPU (their files stay unchanged)."""
    import torch

    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


@contextmanager
def strict_fp32(device):
    """TF32 off on CUDA during a loss check: both sides then round alike whatever algorithm each batch size gets."""
    import torch

    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stub_if_missing(name: str, **attrs: Any) -> None:
    try:
        importlib.import_module(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def _ramps(path: Path):
    """Their ``sigmoid_rampup`` when the clone has ``utils/ramps.py``; else the same formula here."""
    if path.is_file():
        return _load(f"authors_ramps_{path.parent.parent.name}", path).sigmoid_rampup
    from semisup.methods.ramps import sigmoid_rampup as ours  # exp(-5 (1 - t/L)^2), the formula of their ramps.py

    def sigmoid_rampup(current, rampup_length):  # their parameter names (UCMT passes them by keyword)
        return ours(current, rampup_length)

    return sigmoid_rampup


def load_uamt(root: Path) -> types.SimpleNamespace:
    code = root / "UA-MT" / "code"
    return types.SimpleNamespace(vnet=_load("authors_uamt_vnet", code / "networks" / "vnet.py"),
                                 losses=_load("authors_uamt_losses", code / "utils" / "losses.py"),
                                 sigmoid_rampup=_ramps(code / "utils" / "ramps.py"))


def load_uamt_test_util(root: Path) -> types.ModuleType:
    for name in ("h5py", "nibabel"):
        _stub_if_missing(name)
    try:
        importlib.import_module("medpy.metric")
    except ImportError:
        medpy = types.ModuleType("medpy")
        medpy.metric = types.ModuleType("medpy.metric")
        sys.modules.update({"medpy": medpy, "medpy.metric": medpy.metric})
    return _load("authors_uamt_test_util", root / "UA-MT" / "code" / "test_util.py")


def load_ucmt(root: Path) -> types.SimpleNamespace:
    base = root / "UCMT"
    try:
        import unfoldNd
    except ImportError:
        raise SystemExit("UCMT's step needs unfoldNd (their UMIX): pip install unfoldNd") from None
    sys.path.insert(0, str(base))  # their files import models.vnet
    try:
        if not (base / "models" / "networkLib" / "segmodels.py").is_file():
            _stub_if_missing("models.networkLib")
            _stub_if_missing("models.networkLib.segmodels", deeplabv3_resnet50=None, deeplabv3p_resnet50=None)
        deeplab = importlib.import_module("models.deeplabv3")
        vnet = importlib.import_module("models.vnet")
    finally:
        sys.path.remove(str(base))
    return types.SimpleNamespace(deeplab=deeplab, vnet=vnet, unfoldNd=unfoldNd,
                                 losses=_load("authors_ucmt_losses", base / "utils" / "loss_functions.py"),
                                 sigmoid_rampup=_ramps(base / "utils" / "ramps.py"))


# ----------------------------------------------------------------------------- their steps


def script_block(path: Path, first: str, last: str, last_occurrence: int = 1) -> tuple[str, int, int]:
    """Their script's lines from the first one starting with ``first`` through the
    ``last_occurrence``-th one after it starting with ``last``, dedented, and the
    1-based numbers of those lines (recorded in the report)."""
    lines = Path(path).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(first)), None)
    seen, end = 0, None
    for i in range(start if start is not None else len(lines), len(lines)):
        if lines[i].strip().startswith(last):
            seen += 1
            if seen == last_occurrence:
                end = i
                break
    if start is None or end is None:
        raise SystemExit(f"{path}: no block from {first!r} to {last!r} (#{last_occurrence}); "
                         "a different version of their script? (checked against the commits in docs/benchmarks.md)")
    # blank lines in front: tracebacks then name the line numbers of their file
    return "\n" * start + textwrap.dedent("\n".join(lines[start:end + 1])), start + 1, end + 1


def script_functions(path: Path, names: tuple[str, ...]) -> str:
    """Source of their script's top-level functions ``names`` (read with ``ast``, not imported:
    the script parses arguments and starts training at import)."""
    source = Path(path).read_text()
    found = {n.name: ast.get_source_segment(source, n) for n in ast.parse(source).body
             if isinstance(n, ast.FunctionDef) and n.name in names}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path}: functions {missing} not found")
    return "\n\n".join(found[n] for n in names)


def _substitute(code: str, old: str, new: str, where: str) -> str:
    if old not in code:
        raise SystemExit(f"{where}: expected {old!r} in their step (a different version of their script?)")
    return code.replace(old, new)


class _TorchWithFixedNoise:
    """``torch`` for their step in the loss check: ``randn_like`` returns one fixed draw."""

    def __init__(self, normal) -> None:
        self.normal = normal

    def __getattr__(self, name: str):
        import torch

        return getattr(torch, name)

    def randn_like(self, x, **_):
        return self.normal.repeat(x.shape[0] // self.normal.shape[0], *([1] * (x.ndim - 1)))


class _Quiet:
    """Their tensorboard writer and logger: calls accepted, nothing written."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


class AuthorsUAMT:
    """One iteration of UA-MT's ``train_LA_meanteacher_certainty_unlabel.py``, run from their file.

    Their loop body, from ``volume_batch, label_batch = sampled_batch[...]`` through
    ``update_ema_variables(...)``, is read from the script and executed with ``exec``
    (``T = 8`` and ``112, 112, 80`` replaced by the setting's T and patch), with their
    ``get_current_consistency_weight`` and ``update_ema_variables`` (read with ``ast``)
    and their ``create_model`` statements (``n_filters`` from the setting).
    """

    SCRIPT = "UA-MT/code/train_LA_meanteacher_certainty_unlabel.py"

    def __init__(self, mods, setting: dict, device, dropout: bool, root: Path) -> None:
        import numpy as np
        import torch
        import torch.nn.functional as F
        import torch.optim as optim

        self.device = device
        path = Path(root) / self.SCRIPT
        code, first, last = script_block(path, "volume_batch, label_batch = sampled_batch['image']",
                                         "update_ema_variables(model, ema_model, args.ema_decay, iter_num)")
        code = _substitute(code, "T = 8", f"T = {setting['mc_samples']}", str(path))
        code = _substitute(code, "112, 112, 80", ", ".join(str(p) for p in setting["patch"]), str(path))
        self.lines = f"{self.SCRIPT} lines {first}-{last}"
        self.code = compile(code, str(path), "exec")

        def create_model(ema=False):  # their create_model, n_filters from the setting
            net = mods.vnet.VNet(n_channels=1, n_classes=2, n_filters=setting["base_filters"],
                                 normalization="batchnorm", has_dropout=dropout)
            model = net.cuda()
            if ema:
                for param in model.parameters():
                    param.detach_()
            return model

        with cuda_shim(device):
            model, ema_model = create_model(), create_model(ema=True)
        model.to(device), ema_model.to(device)
        model.train()
        ema_model.train()
        self.ns: dict[str, Any] = {
            "torch": torch, "F": F, "np": np, "losses": mods.losses,
            "ramps": types.SimpleNamespace(sigmoid_rampup=mods.sigmoid_rampup),
            "args": types.SimpleNamespace(ema_decay=0.99, consistency=0.1, consistency_rampup=40.0),
            "labeled_bs": setting["labeled"], "max_iterations": MAX_ITERATIONS,
            "model": model, "ema_model": ema_model,
            "optimizer": optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0001),
            "consistency_criterion": mods.losses.softmax_mse_loss,
        }
        exec(compile(script_functions(path, ("get_current_consistency_weight", "update_ema_variables")),
                     str(path), "exec"), self.ns)
        self.model, self.ema_model = model, ema_model

    def fix_noise(self, normal) -> None:
        """Every ``torch.randn_like`` of their step returns ``normal`` (the loss check)."""
        self.ns["torch"] = _TorchWithFixedNoise(normal)

    def step(self, volume_batch, label_batch, iter_num: int) -> dict[str, float]:
        ns = self.ns
        ns.update(sampled_batch={"image": volume_batch, "label": label_batch}, iter_num=iter_num)
        with cuda_shim(self.device), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # their add_(Number, Tensor) overload is deprecated
            exec(self.code, ns)
        # their logging.info line reads these two
        return {"loss": ns["loss"].item(), "consistency": ns["consistency_dist"].item()}

    def networks(self) -> dict[str, Any]:
        return {"student": self.model, "teacher": self.ema_model}


class AuthorsUCMT:
    """One iteration (both steps) of UCMT's ``train_3d.py``, run from their file.

    Their loop body, from the first ``optimizer1.zero_grad()`` through the second
    ``teacher.weighted_update(...)``, is read from the script and executed with ``exec``.
    The names it expects come from here: each student's augmented views
    (``imageA1``, ...) are the plain batch; ``d, h, w``, ``unfolds``, ``folds``,
    ``criterion_dsc`` and the optimizers as their ``main`` builds them; their
    tensorboard writer and logger accept calls and write nothing.
    """

    SCRIPT = "UCMT/train_3d.py"

    def __init__(self, mods, setting: dict, device, root: Path) -> None:
        import torch
        import torch.optim as optim

        self.device = device
        path = Path(root) / self.SCRIPT
        code, first, last = script_block(path, "optimizer1.zero_grad()", "teacher.weighted_update(", 2)
        self.lines = f"{self.SCRIPT} lines {first}-{last}"
        self.code = compile(code, str(path), "exec")
        f = setting["base_filters"]

        def build():
            net = mods.deeplab.VNet(in_channels=1, out_channels=2)
            net.net = mods.vnet.VNetorg(in_channels=1, out_channels=2, n_filters=f, normalization="batchnorm")
            return net.to(device)

        student1, student2, teacher = build(), build(), build()
        teacher.detach_model()
        spatial = list(setting["patch"])
        d, h, w = spatial[0] // 8, spatial[1] // 8, spatial[2] // 8
        for net in (student1, student2, teacher):
            net.train()
        self.ns: dict[str, Any] = {
            "torch": torch, "student1": student1, "student2": student2, "teacher": teacher,
            "optimizer1": optim.AdamW(student1.parameters(), lr=1e-4, betas=(0.9, 0.999)),
            "optimizer2": optim.AdamW(student2.parameters(), lr=1e-4, betas=(0.9, 0.999)),
            "criterion_dsc": mods.losses.DSCLoss(num_classes=2, intra_weights=[1., 1.], inter_weight=1.,
                                                 device=device, is_3d=True),
            "d": d, "h": h, "w": w,
            "unfolds": mods.unfoldNd.UnfoldNd(kernel_size=(d, h, w), stride=(d, h, w)).to(device),
            "folds": mods.unfoldNd.FoldNd(output_size=tuple(spatial), kernel_size=(d, h, w),
                                          stride=(d, h, w)).to(device),
            "sigmoid_rampup": mods.sigmoid_rampup, "args": types.SimpleNamespace(topk=2, log_freq=1, num_epochs=1),
            "writer": _Quiet(), "logger": _Quiet(), "pbar": range(UCMT_ITERS_PER_EPOCH),
        }
        self.student1, self.student2, self.teacher = student1, student2, teacher

    def step(self, image, label, uimage, it: int) -> dict[str, float]:
        ns = self.ns
        metrics = types.SimpleNamespace(train_loss=[], train_s_loss=[], train_u_loss=[], train_x_loss=[])
        ns.update(image=image, label=label, imageA1=image, imageA2=image, uimage=uimage, uimageA1=uimage,
                  uimageA2=uimage, idx=it % UCMT_ITERS_PER_EPOCH, epoch=1 + it // UCMT_ITERS_PER_EPOCH,
                  epoch_metrics=metrics)
        with cuda_shim(self.device), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # their add_(Number, Tensor) overload is deprecated
            exec(self.code, ns)
        return {"loss": metrics.train_loss[-1], "loss_step2": ns["loss"].item()}

    def networks(self) -> dict[str, Any]:
        return {"student1": self.student1, "student2": self.student2, "teacher": self.teacher}


def ucmt_state_for_library(state: dict) -> dict:
    """Their ``VNet`` wrapper's keys (``net.encoder.block_one...``) as the library's (``block_one...``)."""
    return {k.replace("net.encoder.", "").replace("net.classifier.", ""): v for k, v in state.items()}


# ----------------------------------------------------------------------------- ours


def library_method(method: str, setting: dict):
    from bench_step import NUM_CLASSES
    from semisup.config import DataConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
    from semisup.methods import build_method

    if method == "uamt":  # their script: teacher on the unlabeled images only (UA-MT-UN)
        params, dropout = {"mc_samples": setting["mc_samples"], "consistency_on_labeled": False}, True
    else:  # their VNet has no dropout (configs/ucmt_la.yaml likewise)
        params, dropout = {"grid": 8, "k": 2}, False
    cfg = RunConfig(data=DataConfig(patch_size=list(setting["patch"])),
                    network=NetworkConfig(name="vnet", base_filters=setting["base_filters"], dropout=dropout),
                    method=MethodConfig(name=method, params=params),
                    train=TrainConfig(labeled_batch=setting["labeled"], unlabeled_batch=setting["unlabeled"]))
    return build_method(cfg, NUM_CLASSES)


class OurStep:
    """The engine's inner loop (as bench_step.LibraryStep) with the optimizer of their script."""

    def __init__(self, method, method_name: str, variant: str, device) -> None:
        import torch

        from bench_step import LibraryStep

        self.inner = LibraryStep(method, method_name, variant, device)
        params = list(self.inner.method.trainable_parameters())
        self.inner.opt = (torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4) if method_name == "uamt"
                          else torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999)))

    def step(self, labeled, unlabeled, it: int, sync_logs: bool = False):
        import torch

        from bench_step import MAX_STEPS

        labeled, unlabeled = self.inner._prep(labeled), self.inner._prep(unlabeled)
        amp = torch.autocast(self.inner.device.type, dtype=torch.bfloat16) if self.inner.amp else nullcontext()
        with amp:
            out = self.inner.method.training_step(labeled, unlabeled, it, MAX_STEPS)
        self.inner.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.inner.opt.step()
        self.inner.method.after_optimizer_step(it)
        return {"loss": float(out.loss.detach())} if sync_logs else None


# ----------------------------------------------------------------------------- measurements


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def time_interleaved(runners: dict[str, Callable[[], Any]], device, reps: int, warmup: int, label: str) -> dict:
    import torch

    wall: dict[str, list[float]] = {n: [] for n in runners}
    cpu: dict[str, list[float]] = {n: [] for n in runners}
    peak: dict[str, float] = {}
    for rep in range(warmup + reps):
        for name, fn in runners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            if rep >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
        print(f"  {label} rep {rep + 1}/{warmup + reps}: " + ", ".join(
            f"{n} {c[-1]:.2f}s" for n, c in (cpu if device.type == "cpu" else wall).items() if c),
            file=sys.stderr, flush=True)
    out = {"wall_s": wall, "cpu_s": cpu, "median_wall_s": {n: _median(v) for n, v in wall.items()},
           "median_cpu_s": {n: _median(v) for n, v in cpu.items()}}
    if peak:
        out["peak_gib"] = peak
    return out


def fixed_batch(setting: dict, device, seed: int):
    from bench_step import make_batch

    return make_batch(setting, device, seed)


def uamt_side_by_side(mods, setting: dict, variants: list[str], device, args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import semisup.methods.uamt as uamt_module
    from bench_step import fixed_noise_for, ref_noise

    labeled, unlabeled = fixed_batch(setting, device, args.seed)
    volume = torch.cat([labeled["image"], unlabeled["image"]])
    label_full = torch.cat([labeled["label"][:, 0], torch.zeros_like(unlabeled["image"][:, 0], dtype=torch.long)])
    it = MAX_ITERATIONS // 2  # past the ramps: full consistency weight
    report: dict[str, Any] = {}

    # -- loss check: dropout off, one fixed teacher perturbation, same weights
    if args.check_steps:
        with strict_fp32(device):
            torch.manual_seed(args.seed)
            theirs = AuthorsUAMT(mods, setting, device, dropout=False, root=args.authors_dir)
            ours_method = library_method("uamt", setting)
            ours_method.student.load_state_dict(theirs.model.state_dict())
            ours_method.teacher.load_state_dict(theirs.ema_model.state_dict())
            ours_method.to(device)
            for net in (ours_method.student, ours_method.teacher):  # the check runs without dropout
                for m in net.modules():
                    if isinstance(m, torch.nn.Dropout3d):
                        m.p = 0.0
            fixed = fixed_noise_for(ours_method, labeled, unlabeled, args.seed + 1)
            # the same standard-normal draw for their randn_like: clamp(N * 0.1, -0.2, 0.2) = fixed
            normal = torch.randn(unlabeled["image"].shape, generator=torch.Generator().manual_seed(args.seed + 1))
            theirs.fix_noise(normal.to(device))
            steps = [it + i for i in range(args.check_steps)]
            ref = [theirs.step(volume, label_full, s) for s in steps]
            original = uamt_module.add_clamped_noise
            uamt_module.add_clamped_noise = lambda x, std, clip: ref_noise(x, std, clip, fixed)
            checks = {}
            try:
                for v in variants:
                    ours = OurStep(ours_method, "uamt", v, device)
                    got = [ours.step(labeled, unlabeled, s, sync_logs=True) for s in steps]
                    worst = max(abs(g["loss"] - r["loss"]) / abs(r["loss"]) for g, r in zip(got, ref))
                    rtol = args.rtol_amp if "bf16" in v else args.rtol
                    checks[v] = {"authors": [r["loss"] for r in ref], "ours": [g["loss"] for g in got],
                                 "max_rel_diff": worst, "rtol": rtol, "ok": worst <= rtol}
                    print(f"  uamt check {v}: max rel loss diff {worst:.2e} (tol {rtol:.0e})", file=sys.stderr, flush=True)
            finally:
                uamt_module.add_clamped_noise = original
            report["check"] = checks

    # -- timing: real stochastic configuration (dropout on, fresh noise), same start weights
    torch.manual_seed(args.seed)
    theirs = AuthorsUAMT(mods, setting, device, dropout=True, root=args.authors_dir)
    report["authors_step"] = theirs.lines
    method = library_method("uamt", setting)
    method.student.load_state_dict(theirs.model.state_dict())
    method.teacher.load_state_dict(theirs.ema_model.state_dict())
    method.to(device)
    ours = {v: OurStep(method, "uamt", v, device) for v in variants}
    runners = {"authors": lambda: theirs.step(volume, label_full, it)}
    runners.update({f"ours {v}": (lambda s=s: s.step(labeled, unlabeled, it)) for v, s in ours.items()})
    flops = {}
    for name in ("authors", f"ours {variants[0]}"):
        with FlopCounterMode(display=False) as counter:
            runners[name]()
        flops[name] = int(counter.get_total_flops())
    report["flops"] = flops
    report["timing"] = time_interleaved(runners, device, args.reps, args.warmup, "uamt")
    return report


def ucmt_side_by_side(mods, setting: dict, variants: list[str], device, args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    labeled, unlabeled = fixed_batch(setting, device, args.seed)
    it = 10 * UCMT_ITERS_PER_EPOCH  # past the ramp
    report: dict[str, Any] = {}
    torch.manual_seed(args.seed)
    theirs = AuthorsUCMT(mods, setting, device, args.authors_dir)
    report["authors_step"] = theirs.lines
    method = library_method("ucmt", setting)
    for name, net in theirs.networks().items():
        getattr(method, name).load_state_dict(ucmt_state_for_library(net.state_dict()))
    method.to(device)
    if args.check_steps:
        x = torch.cat([labeled["image"], unlabeled["image"]])
        diffs = {}
        with torch.no_grad():
            for name, net in theirs.networks().items():
                ours_net = getattr(method, name)
                net.eval(), ours_net.eval()
                diffs[name] = float((net(x)["out"] - ours_net(x)).abs().max())
                net.train(), ours_net.train()
        snapshot = copy.deepcopy(theirs, memo={id(torch): torch})  # the check's steps must not move the timed networks
        first_theirs = snapshot.step(labeled["image"], labeled["label"], unlabeled["image"], it)
        first_ours = OurStep(method, "ucmt", "fp32", device).step(labeled, unlabeled, it, sync_logs=True)
        ok = max(diffs.values()) <= 1e-4 * max(1.0, float(x.abs().max()))
        report["check"] = {"max_abs_logit_diff_eval": diffs, "networks_identical": ok,
                           "first_iteration_loss": {"authors step 1": first_theirs["loss"],
                                                    "authors step 2": first_theirs["loss_step2"],
                                                    "ours (steps 1 + 2, one backward)": first_ours["loss"]}}
        print(f"  ucmt check: logits max abs diff {diffs}", file=sys.stderr, flush=True)
    ours = {v: OurStep(method, "ucmt", v, device) for v in variants}
    runners = {"authors": lambda: theirs.step(labeled["image"], labeled["label"], unlabeled["image"], it)}
    runners.update({f"ours {v}": (lambda s=s: s.step(labeled, unlabeled, it)) for v, s in ours.items()})
    flops = {}
    for name in ("authors", f"ours {variants[0]}"):
        with FlopCounterMode(display=False) as counter:
            runners[name]()
        flops[name] = int(counter.get_total_flops())
    report["flops"] = flops
    report["timing"] = time_interleaved(runners, device, args.reps, args.warmup, "ucmt")
    return report


# ----------------------------------------------------------------------------- inference


def inference_side_by_side(root: Path, device, args) -> dict:
    """Whole-volume prediction: their ``test_single_case`` against ``predict_volume``."""
    import io
    from contextlib import redirect_stdout

    import numpy as np
    import torch

    from bench_inference import SETTINGS as INF_SETTINGS, calibrate_batchnorm, load_volume
    from semisup.inference import predict_volume
    from semisup.networks.vnet import VNet

    test_util = load_uamt_test_util(root)
    vnet_mod = _load("authors_uamt_vnet", root / "UA-MT" / "code" / "networks" / "vnet.py")
    inf = INF_SETTINGS[args.setting]
    roi = list(inf["roi"])
    image, name = load_volume(args.data, args.case, inf)
    torch.manual_seed(0)
    ours = VNet(1, 2, inf["base_filters"], dropout=True).to(device)
    calibrate_batchnorm(ours, image.to(device), roi)
    theirs = vnet_mod.VNet(n_channels=1, n_classes=2, n_filters=inf["base_filters"], normalization="batchnorm",
                           has_dropout=True).to(device)
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last_3d)
    volume = image[0, 0].numpy()
    # Equal windows: their strides at half the window (= overlap 0.5 here); and the
    # strides of their test_LA.py (18 in x/y, 4 in z), as they ship it.
    half = (roi[0] // 2, roi[2] // 2)

    def theirs_run(mc: int, strides: tuple[int, int]):
        def dropout(on: bool):
            for m in theirs.modules():
                if isinstance(m, torch.nn.Dropout3d):
                    m.train(on)
        dropout(mc > 1)  # T samples: their test code run T times with dropout active
        total = None
        with cuda_shim(device), torch.no_grad(), redirect_stdout(io.StringIO()):
            for _ in range(mc):
                _, score = test_util.test_single_case(theirs, volume, strides[0], strides[1], roi, num_classes=2)
                total = score if total is None else total + score
        dropout(False)
        return total / mc

    def ours_run(net, mc: int):
        return predict_volume(net, image, roi, mc_samples=mc, overlap=0.5, sw_batch_size=2, device=device)

    report: dict[str, Any] = {"case": name, "volume_shape": list(volume.shape), "roi": roi,
                              "target_spacing": inf["target_spacing"], "base_filters": inf["base_filters"]}
    p_theirs = theirs_run(1, half)
    p_ours = ours_run(ours, 1)["probabilities"][0].cpu().numpy()
    report["deterministic_max_abs_prob_diff"] = float(np.abs(p_theirs - p_ours).max())
    print(f"  inference: deterministic max |p_theirs - p_ours| = {report['deterministic_max_abs_prob_diff']:.2e}",
          file=sys.stderr, flush=True)
    for mc in (1, 8):
        runners = {f"authors, stride {half[0]}/{half[1]} (same windows)": lambda mc=mc: theirs_run(mc, half),
                   "authors, stride 18/4 (test_LA.py)": lambda mc=mc: theirs_run(mc, (18, 4)),
                   "ours": lambda mc=mc: ours_run(ours, mc),
                   "ours channels-last": lambda mc=mc: ours_run(ours_cl, mc)}
        report[f"T={mc}"] = time_interleaved(runners, device, args.inference_reps, 0, f"inference T={mc}")
    return report


# ----------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    lines = []
    for m in ("uamt", "ucmt"):
        r = report.get(m)
        if not r:
            continue
        t = r["timing"]
        key = "median_cpu_s" if report["device_type"] == "cpu" else "median_wall_s"
        a = t[key]["authors"]
        lines += [f"\n{m}: {report['setting']} setting {report['setting_values']}; step GFLOP authors "
                  f"{r['flops']['authors'] / 1e9:.1f}, ours {list(r['flops'].values())[1] / 1e9:.1f}\n",
                  "| step | median CPU s | median wall s | authors / this | loss check |", "|---|---|---|---|---|"]
        for name in t[key]:
            chk = r.get("check", {})
            v = name.removeprefix("ours ")
            if m == "uamt" and v in chk:
                c = chk[v]
                check = f"{c['max_rel_diff']:.1e} <= {c['rtol']:.0e} {'ok' if c['ok'] else 'FAIL'}"
            elif m == "ucmt" and name != "authors" and chk:
                check = "networks identical" if chk["networks_identical"] else "NETWORKS DIFFER"
            else:
                check = "-"
            default = " (default here)" if v == report.get("default_variant") else ""
            lines.append(f"| {name}{default} | {t['median_cpu_s'][name]:.3f} | {t['median_wall_s'][name]:.3f} | "
                         f"{a / t[key][name]:.2f} | {check} |")
        if "peak_gib" in t:
            lines.append("\npeak GPU GiB: " + ", ".join(f"{n} {g:.2f}" for n, g in t["peak_gib"].items()))
    inf = report.get("inference")
    if inf:
        lines.append(f"\ninference {inf['case']} {inf['volume_shape']}, windows {inf['roi']}, "
                     f"deterministic max |p diff| {inf['deterministic_max_abs_prob_diff']:.1e}\n")
        lines += ["| path | T = 1 CPU s | T = 1 wall s | T = 8 CPU s | T = 8 wall s |", "|---|---|---|---|---|"]
        for name in inf["T=1"]["median_cpu_s"]:
            lines.append(f"| {name} | {inf['T=1']['median_cpu_s'][name]:.2f} | {inf['T=1']['median_wall_s'][name]:.2f} "
                         f"| {inf['T=8']['median_cpu_s'][name]:.2f} | {inf['T=8']['median_wall_s'][name]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = parts_of(args)
    missing = missing_files(args.authors_dir, parts)
    if missing:
        print(f"error: --authors-dir {args.authors_dir}: missing {', '.join(missing)}; {CLONE_HINT}", file=sys.stderr)
        return 2
    if Path(args.authors_dir).resolve().is_relative_to(REPO):
        print(f"error: --authors-dir {args.authors_dir} is inside this repository; keep the authors' code outside it "
              "(it has no licence)", file=sys.stderr)
        return 2
    import torch

    from harness import matmul_tflops, run_header, write_json
    from semisup.engine.device import resolve_device, training_switches

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    setting = dict(SETTINGS[args.setting])
    deepest = math.prod(setting["patch"]) // 16 ** 3  # V-Net: four halvings
    switches = training_switches(device, "auto", "auto", deepest_voxels=deepest)
    default_variant = ("cl" if switches.channels_last else "fp32") + ("+bf16" if switches.amp_dtype is not None else "")
    default_variant = default_variant.removeprefix("fp32+")
    report: dict[str, Any] = {**run_header(device), "device_type": device.type, "setting": args.setting,
                              "setting_values": setting, "default_variant": default_variant,
                              "default_reason": switches.reason,
                              "matmul_tflops": {"fp32": matmul_tflops(device, torch.float32),
                                                "bf16": matmul_tflops(device, torch.bfloat16)}}
    print(f"{report['device']}; defaults here: {default_variant} ({switches.reason}); "
          f"matmul TFLOP/s {report['matmul_tflops']}", file=sys.stderr, flush=True)
    root = Path(args.authors_dir)
    if "uamt" in parts:
        report["uamt"] = uamt_side_by_side(load_uamt(root), setting, list(args.variants), device, args)
    if "ucmt" in parts:
        report["ucmt"] = ucmt_side_by_side(load_ucmt(root), setting, list(args.variants), device, args)
    if "inference" in parts:
        if not (args.data / "dataset.json").is_file():
            print(f"error: --data {args.data}: no dataset.json (LA2018 in MSD layout)", file=sys.stderr)
            return 2
        report["inference"] = inference_side_by_side(root, device, args)
    for m in ("uamt", "ucmt"):
        if m in report:
            f = report[m]["flops"]["authors"]
            report[m]["compute_floor_s"] = {k: f / (r * 1e12) for k, r in report["matmul_tflops"].items()}
    print(markdown(report))
    if args.json:
        write_json(args.json, report)
    bad = [v for v, c in report.get("uamt", {}).get("check", {}).items() if not c["ok"]]
    if bad or not report.get("ucmt", {}).get("check", {}).get("networks_identical", True):
        print(f"loss check FAILED: {bad or 'ucmt networks'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
