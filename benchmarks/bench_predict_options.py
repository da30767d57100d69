#!/usr/bin/env python3
"""Prediction options measured on labeled selection cases of a trained run.

For each case (never a report set: pass cases that are not reported on), the model
predicts with four sliding-window settings (constant or Gaussian blending x dropout
masks drawn per window or shared by all windows) and records:

- ``seam``: :func:`semisup.measure.seams.seam_ratio` of the entropy on the network's
  grid (window borders from ``inference.window_borders``); 1 = no tile seams;
- ``auroc``: voxel AUROC of the entropy for the errors of the label, inside the
  union of prediction and reference dilated by ``REGION_MARGIN`` voxels (so the easy
  background does not inflate it), MONAI ``compute_roc_auc``;
- Dice on the input grid of the label from the MC mean vs from the dropout-off pass,
  each restored by nearest neighbour (label) or linearly (probabilities, then argmax),
  with and without the largest connected component, and with test-time flips along x.

Writes ``<out>/predict_options.json`` and PNG slices of the entropy per setting.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_predict_options.py --checkpoint runs/la/uamt/checkpoints/last.pt \\
        --dataset runs/la/dataset.json --split unlabeled --cases 6 --out runs/predict_options
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import REPO, command_header, write_json

#: Voxels added around prediction and reference for the AUROC region (about 5 mm at 1.25 mm).
REGION_MARGIN = 4
SETTINGS = {
    "constant_independent": {"blend_mode": "constant", "shared_masks": False},
    "gaussian_independent": {"blend_mode": "gaussian", "shared_masks": False},
    "constant_shared": {"blend_mode": "constant", "shared_masks": True},
    "gaussian_shared": {"blend_mode": "gaussian", "shared_masks": True},
}


def label_path(image: str) -> Path:
    """The reference label of an MSD image (``imagesTr/x`` -> ``labelsTr/x``)."""
    p = Path(image)
    return p.parent.parent / "labelsTr" / p.name


def save_figure(out: Path, case: str, borders: list[list[int]], png: Path) -> None:
    """Entropy before (constant blending, masks per window) and after (Gaussian, shared
    masks) on one axial slice, window borders dotted."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.load(out / f"{case}_image.npy")
    maps = {k: np.load(out / f"{case}_{k}_entropy.npy") for k in ("constant_independent", "gaussian_shared")}
    z = image.shape[2] // 2
    vmax = max(float(m[:, :, z].max()) for m in maps.values())
    fig = Figure(figsize=(10, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    titles = {"constant_independent": "before: constant blending,\nmasks drawn per window",
              "gaussian_shared": "after: Gaussian blending,\nmasks shared by all windows"}
    axes = fig.subplots(1, 3)
    axes[0].imshow(image[:, :, z].T, cmap="gray", origin="lower")
    axes[0].set_title(f"{case}, z = {z} (1.25 mm grid)", fontsize=9)
    for ax, (key, m) in zip(axes[1:], maps.items()):
        im = ax.imshow(m[:, :, z].T, cmap="inferno", vmin=0, vmax=vmax, origin="lower")
        for b in borders[0]:
            ax.axvline(b - 0.5, color="cyan", lw=0.5, ls=":")
        for b in borders[1]:
            ax.axhline(b - 0.5, color="cyan", lw=0.5, ls=":")
        ax.set_title(titles[key], fontsize=9)
    fig.colorbar(im, ax=axes[1:], shrink=0.8, label="entropy (nats)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")


def main() -> None:
    import numpy as np
    import torch
    from monai.metrics import compute_roc_auc
    from scipy.ndimage import binary_dilation

    from semisup.data import preprocess_image, preprocess_label, read_image, image_to_array
    from semisup.data import restore_label_from_probabilities, restore_to_reference
    from semisup.engine.predict import load_trained
    from semisup.inference import largest_connected_component, predict_volume, window_borders
    from semisup.measure.metrics import dice_per_class
    from semisup.measure.seams import seam_ratio

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True, help="the run's dataset.json")
    ap.add_argument("--split", default="unlabeled", help="list of dataset.json to take the cases from (labels from labelsTr)")
    ap.add_argument("--cases", type=int, default=6, help="the first N cases of the list")
    ap.add_argument("--overlap", type=float, help="default: the run's inference.overlap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "predict_options")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS),
                    help="window settings to run (default: all four); e.g. gaussian_shared alone for the label source")
    ap.add_argument("--figure", type=Path, help="PNG of the first case's entropy before/after (e.g. docs/images/seams.png)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_trained(args.checkpoint, "cpu")
    cfg = model.cfg
    overlap = cfg.inference.overlap if args.overlap is None else args.overlap
    roi = cfg.inference.roi_size or cfg.data.patch_size
    nc = len(model.class_names)
    split = json.loads(args.dataset.read_text())[args.split][: args.cases]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in split:
        image = read_image(entry["image"])
        name = Path(entry["image"]).name.split(".")[0]
        ref_img = read_image(entry.get("label") or label_path(entry["image"]))
        ref_fine = image_to_array(ref_img)
        pre = preprocess_image(image, cfg.data)
        ref_pre = preprocess_label(ref_img, cfg.data, reference=image)[0]
        borders = window_borders(pre.shape[1:], roi, overlap)
        row = {"case": name, "grid": list(pre.shape[1:]), "settings": {}}
        for key in args.settings:
            setting = SETTINGS[key]
            t0 = time.time()
            out = predict_volume(model.networks, torch.from_numpy(pre)[None], roi, mc_samples=cfg.inference.mc_samples,
                                 overlap=overlap, sw_batch_size=cfg.inference.sw_batch_size, seed=args.seed,
                                 label_source="dropout_off", **setting)
            seconds = time.time() - t0
            ent = out["entropy"][0, 0].numpy()
            mean_label = out["probabilities"][0].argmax(0).numpy()
            region = binary_dilation((mean_label > 0) | (ref_pre > 0), iterations=REGION_MARGIN)
            errors = (mean_label != ref_pre)[region]
            auroc = float(compute_roc_auc(torch.from_numpy(ent[region]), torch.from_numpy(errors.astype(np.int64))))
            res = {"seam": seam_ratio(ent, borders), "auroc": auroc, "seconds": seconds}
            for source, probs in (("mc_mean", out["probabilities"][0].numpy()), ("dropout_off", out["label_probabilities"][0].numpy())):
                nearest = restore_to_reference(probs.argmax(0)[None].astype(np.uint8), image, "nearest")[0]
                linear = restore_label_from_probabilities(probs, image)
                lcc = largest_connected_component(torch.from_numpy(linear.astype(np.int64)), nc).numpy()
                res[f"dice_{source}_nearest"] = dice_per_class(nearest, ref_fine, nc)
                res[f"dice_{source}_linear"] = dice_per_class(linear, ref_fine, nc)
                res[f"dice_{source}_linear_lcc"] = dice_per_class(lcc, ref_fine, nc)
            row["settings"][key] = res
            if key in ("constant_independent", "gaussian_shared") and len(rows) == 0:
                np.save(args.out / f"{name}_{key}_entropy.npy", ent)
                np.save(args.out / f"{name}_image.npy", pre[0])
        # Test-time flips along x on the chosen setting (one more pass per case).
        flip = predict_volume(model.networks, torch.from_numpy(pre)[None], roi, mc_samples=cfg.inference.mc_samples,
                              overlap=overlap, sw_batch_size=cfg.inference.sw_batch_size, seed=args.seed,
                              label_source="dropout_off", blend_mode="gaussian", shared_masks=True, flip_axes=[0])
        for source, probs in (("mc_mean", flip["probabilities"][0].numpy()), ("dropout_off", flip["label_probabilities"][0].numpy())):
            row[f"dice_flip_x_{source}_linear"] = dice_per_class(restore_label_from_probabilities(probs, image), ref_fine, nc)
        rows.append(row)
        print(json.dumps({"case": name, **{k: {m: v[m] for m in ("seam", "auroc")} for k, v in row["settings"].items()}}), flush=True)

    def mean_of(path) -> float:
        vals = []
        for r in rows:
            v = path(r)
            vals.append(float(np.mean(list(v.values()))) if isinstance(v, dict) else float(v))
        return float(np.mean(vals))

    summary = {}
    for key in args.settings:
        s = {m: mean_of(lambda r, m=m, key=key: r["settings"][key][m]) for m in ("seam", "auroc", "seconds")}
        for source in ("mc_mean", "dropout_off"):
            for restore in ("nearest", "linear", "linear_lcc"):
                s[f"dice_{source}_{restore}"] = mean_of(lambda r, k=f"dice_{source}_{restore}", key=key: r["settings"][key][k])
        summary[key] = s
    summary["flip_x_gaussian_shared"] = {f"dice_{s}_linear": mean_of(lambda r, s=s: r[f"dice_flip_x_{s}_linear"])
                                         for s in ("mc_mean", "dropout_off")}
    write_json(args.out / "predict_options.json", {**command_header(), "checkpoint": str(args.checkpoint),
                                                   "dataset": str(args.dataset), "split": args.split, "cases": [r["case"] for r in rows],
                                                   "overlap": overlap, "summary": summary, "per_case": rows})
    print(json.dumps(summary, indent=1))
    if args.figure and rows and {"constant_independent", "gaussian_shared"} <= set(args.settings):
        save_figure(args.out, rows[0]["case"], window_borders(rows[0]["grid"], roi, overlap), args.figure)


if __name__ == "__main__":
    main()
