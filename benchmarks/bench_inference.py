#!/usr/bin/env python3
"""MC-dropout whole-volume inference on an LA2018 volume: fast path vs T separate passes.

Times, interleaved (so load from other jobs hits both alike), on one preprocessed
LA2018 volume and a V-Net with dropout:

  reference   ``predict_volume_reference``: T full sliding-window passes, one per MC sample
  fast        ``predict_volume``: one sliding-window pass; per window the encoder runs once
              and only the stochastic decoder T times, batched (V-Net feature reuse)
  fast+cl     the same with the network in channels-last 3D (as trained with train.channels_last)

Agreement: both are T-sample Monte Carlo estimates of the same mean softmax, with
different dropout draws, so they can only agree in distribution. The check compares
``mean |p_fast - p_ref|`` with the Monte Carlo noise floor ``mean |p_ref - p_ref'|``
of two reference runs with different seeds (``--agreement``); the fast path passes
when its difference is at most ``--agree-factor`` (1.5) times the floor. The label
maps' Dice is reported too.

FLOPs of each path from ``torch.utils.flop_counter.FlopCounterMode`` (the first,
untimed run); compute floor = FLOPs / measured dense matmul throughput.

The network is untrained unless ``--checkpoint`` names a V-Net checkpoint of the
same setting. An untrained network's BatchNorm running statistics (mean 0, variance
1) do not match its activations, and in eval mode they shrink layer after layer into
denormal floats, which CPUs process many times slower (measured 4.7x on one V-Net
forward here): timings would measure that artefact. So the untrained network's
BatchNorm statistics are first calibrated on random windows of the volume (a few
train-mode forwards, cumulative averages), as training would have set them.

Examples::

    python benchmarks/bench_inference.py --setting cpu --reps 3 --agreement
    python benchmarks/bench_inference.py --setting paper --reps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SemiSupUncertainty"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from semisup.config import DataConfig  # noqa: E402
from semisup.data import preprocess_image, read_image  # noqa: E402
from semisup.inference import predict_volume, predict_volume_reference  # noqa: E402
from semisup.networks.vnet import VNet  # noqa: E402
from harness import matmul_tflops, run_header, write_json  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "LA2018"
SETTINGS: dict[str, dict[str, Any]] = {
    # benchmarks/bench_la.py "cpu": 1.25 mm, V-Net 8 filters, 64 x 64 x 32 windows.
    "cpu": {"base_filters": 8, "roi": [64, 64, 32], "target_spacing": [1.25, 1.25, 1.25]},
    # UA-MT paper: native 0.625 mm, V-Net 16 filters, 112 x 112 x 80 windows.
    "paper": {"base_filters": 16, "roi": [112, 112, 80], "target_spacing": None},
}


def load_volume(data: Path, case: int, setting: dict) -> tuple[torch.Tensor, str]:
    spec = json.loads((data / "dataset.json").read_text())
    entry = spec["training"][case]
    img = read_image(data / entry["image"])
    cfg = DataConfig(modality="MR", patch_size=list(setting["roi"]), target_spacing=setting["target_spacing"])
    arr = preprocess_image(img, cfg)
    return torch.as_tensor(arr, dtype=torch.float32)[None], entry["image"]


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, image: torch.Tensor, roi: list[int], windows: int = 8) -> None:
    """Running statistics of every BatchNorm from ``windows`` random crops (zero-padded to ``roi``)."""
    g = torch.Generator().manual_seed(0)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for _ in range(windows):
        starts = [int(torch.randint(0, max(s - r, 0) + 1, (1,), generator=g)) for s, r in zip(image.shape[2:], roi)]
        crop = image[(..., *[slice(a, a + r) for a, r in zip(starts, roi)])]
        pad = [v for s, r in reversed(list(zip(crop.shape[2:], roi))) for v in (0, r - s)]
        net(torch.nn.functional.pad(crop, pad))
    for m in norms:
        m.momentum = 0.1
    net.eval()


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    denom = int(a.sum() + b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    ap.add_argument("--case", type=int, default=0, help="index in dataset.json training list")
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--sw-batch-size", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--paths", nargs="+", default=["reference", "fast", "fast+cl"], choices=["reference", "fast", "fast+cl"])
    ap.add_argument("--agreement", action="store_true", help="Monte Carlo agreement check (one more reference run)")
    ap.add_argument("--agree-factor", type=float, default=1.5)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    if not (args.data / "dataset.json").is_file():
        print(f"skipped: LA2018 not found at {args.data} (the shared data folder is only on the development "
              "machines; pass --data)", file=sys.stderr)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    setting = SETTINGS[args.setting]
    image, name = load_volume(args.data, args.case, setting)
    torch.manual_seed(0)
    net = VNet(1, 2, setting["base_filters"], dropout=True).to(device)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)["method"]
        prefix = next(p for p in ("student.", "teacher.", "student1.") if any(k.startswith(p) for k in state))
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    else:
        calibrate_batchnorm(net, image.to(device), setting["roi"])
    net.eval()
    net_cl = VNet(1, 2, setting["base_filters"], dropout=True).to(device)
    net_cl.load_state_dict(net.state_dict())
    net_cl.to(memory_format=torch.channels_last_3d).eval()

    common = dict(mc_samples=args.mc_samples, overlap=args.overlap, sw_batch_size=args.sw_batch_size, device=device)
    roi = setting["roi"]
    runs: dict[str, Callable[[], dict]] = {
        "reference": lambda: predict_volume_reference(net, image, roi, **common),
        "fast": lambda: predict_volume(net, image, roi, **common),
        "fast+cl": lambda: predict_volume(net_cl, image, roi, **common),
    }
    runs = {k: v for k, v in runs.items() if k in args.paths}
    report: dict[str, Any] = {
        **run_header(device),
        "setting": args.setting,
        "case": name,
        "volume_shape": list(image.shape[2:]),
        "mc_samples": args.mc_samples,
        "overlap": args.overlap,
        "matmul_tflops_fp32": matmul_tflops(device),
        "paths": {},
    }
    print(f"{name}: volume {report['volume_shape']}, windows {roi}, T = {args.mc_samples}, "
          f"matmul {report['matmul_tflops_fp32']:.3f} TFLOP/s", file=sys.stderr, flush=True)

    outputs: dict[str, dict] = {}
    for path, fn in runs.items():  # first run: FLOPs, warm-up and the outputs compared below
        torch.manual_seed(1)
        with FlopCounterMode(display=False) as counter:
            outputs[path] = fn()
        report["paths"][path] = {"flops": int(counter.get_total_flops()), "wall_s": [], "cpu_s": []}
    for rep in range(args.reps):
        for path, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            report["paths"][path]["wall_s"].append(time.perf_counter() - t0)
            report["paths"][path]["cpu_s"].append(time.process_time() - c0)
        print(f"  rep {rep + 1}/{args.reps}: " + ", ".join(
            f"{p} {r['wall_s'][-1]:.2f}s" for p, r in report["paths"].items()), file=sys.stderr, flush=True)
    for r in report["paths"].values():
        r["median_wall_s"] = statistics.median(r["wall_s"]) if r["wall_s"] else None
        r["median_cpu_s"] = statistics.median(r["cpu_s"]) if r["cpu_s"] else None
        r["floor_s"] = r["flops"] / (report["matmul_tflops_fp32"] * 1e12)

    if "reference" in outputs:
        ref = outputs["reference"]["probabilities"]
        if args.agreement:
            torch.manual_seed(2)
            ref2 = predict_volume_reference(net, image, roi, **common)["probabilities"]
            report["mc_noise_floor"] = float((ref - ref2).abs().mean())
        for path in ("fast", "fast+cl"):
            if path in outputs:
                p = outputs[path]["probabilities"]
                r = report["paths"][path]
                r["mean_abs_prob_diff_vs_reference"] = float((p - ref).abs().mean())
                r["label_dice_vs_reference"] = dice(outputs[path]["label"] == 1, outputs["reference"]["label"] == 1)
                if "mc_noise_floor" in report:
                    r["agrees"] = r["mean_abs_prob_diff_vs_reference"] <= args.agree_factor * report["mc_noise_floor"]

    lines = [f"\nMC inference, {report['setting']} setting, {name} {report['volume_shape']}, T = {args.mc_samples}, "
             f"overlap {args.overlap}, {report['device']}\n",
             "| path | TFLOP | median wall s | reference / this (wall) | median CPU s | reference / this (CPU) "
             "| compute floor s | mean abs p diff vs ref |",
             "|---|---|---|---|---|---|---|---|"]
    ref_r = report["paths"].get("reference")
    for path, r in report["paths"].items():
        ratio_w = f"{ref_r['median_wall_s'] / r['median_wall_s']:.2f}" if ref_r and r["median_wall_s"] else "-"
        ratio_c = f"{ref_r['median_cpu_s'] / r['median_cpu_s']:.2f}" if ref_r and r["median_cpu_s"] else "-"
        diff = r.get("mean_abs_prob_diff_vs_reference")
        diff_s = "-" if diff is None else f"{diff:.2e}" + (f" (noise floor {report['mc_noise_floor']:.2e})"
                                                          if "mc_noise_floor" in report else "")
        lines.append(f"| {path} | {r['flops'] / 1e12:.2f} | {r['median_wall_s']:.2f} | {ratio_w} | "
                     f"{r['median_cpu_s']:.2f} | {ratio_c} | {r['floor_s']:.2f} | {diff_s} |")
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, report)
    bad = [p for p, r in report["paths"].items() if r.get("agrees") is False]
    if bad:
        print(f"agreement check FAILED for {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
