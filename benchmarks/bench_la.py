#!/usr/bin/env python3
"""LA2018 benchmark: semi-supervised methods vs supervised-only on the same labeled cases.

Protocol (../shared/data/README.md): the first ``--labeled`` cases of ``training`` (file
order) are labeled, the last 16 are the validation/report set (kept out of the
unlabeled pool, never trained on; figures come from the LAST checkpoint, so no model
selection happens on them), the cases in between are used without their labels. The 20 official test cases are not in the
shared copy, so figures are on these 16 validation cases: say so when comparing
with the papers.

Settings:
  cpu    target spacing 1.25 mm (2x down), V-Net with 8 base filters, 48x48x32 patches
         (a third centred on the atrium), 2000 iterations (1/3 of the paper's), T = 4,
         teacher on unlabeled images (UA-MT-UN, the authors' code). One thread per
         method: supervised 7 min, UA-MT 22 min, UCMT ~50 min (docs/benchmarks.md).
  paper  0.625 mm, V-Net 16 filters, 112x112x80, batch 2+2, 6000 iterations, T = 8 (GPU).

Sparse labels (``--sparse-every N``): the labeled cases keep every N-th axial (z) slice of
their label (z = 0, N, 2N, ...); every other slice becomes the dataset's ``ignore`` value
(``"ignore": 2`` in ``labels``, nnU-Net v2's declaration), left out of the losses. The
report cases keep their full labels. The run key gets ``/sparseN``.

Each method runs ``semisup train`` then ``semisup predict`` and ``semisup evaluate`` in
subprocesses; it/s comes from the progress stream, peak RSS from the child's rusage.
Results go to ``<out>/results.json`` and a markdown table on stdout.

Cross-validation (``--folds K --fold i``, issue 14): the 80 shared cases are dealt into K
folds (``harness.kfold``, fixed seed); fold i is the report set, never trained on and
never used to choose anything. Of the other cases (file order) the first ``--labeled``
are labeled, the last ``FOLD_VALIDATION`` are the validation set (the engine's
validation, and the largest-component decision stored with the model,
``inference.largest_component: auto``), the rest are unlabeled. Figures come from
``last.pt`` on the report set, with mean, median, worst case, 5th percentile and the
number of cases under 0.5 Dice.

Example::

    python benchmarks/bench_la.py --setting cpu --labeled 16 --methods supervised uamt --out runs/bench_la_cpu
    python benchmarks/bench_la.py --setting cpu --folds 5 --fold 0 --methods supervised uamt ucmt_sgd --out runs/bench_la_cv
    python benchmarks/bench_la.py --setting cpu --labeled 16 --methods supervised --sparse-every 5 --out runs/bench_la_sparse
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import (
    attempt_count,
    case_summary,
    kfold,
    Variant,
    child_env,
    iteration_rates,
    merge_result,
    pooled_table,
    predict_and_evaluate,
    progress_events,
    read_results,
    train_in_subprocess,
    training_seconds,
    training_switches,
    variant,
    write_run_config,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "LA2018"
VALIDATION_CASES = 16
#: Validation cases of a cross-validation fold, taken from the end of the non-report cases.
FOLD_VALIDATION = 8
#: Label value written on the unlabeled slices of a sparse label (above LA's classes 0, 1).
SPARSE_IGNORE_VALUE = 2

SETTINGS = {
    "cpu": {
        "data": {"modality": "MR", "spatial_dims": 3, "patch_size": [48, 48, 32], "target_spacing": [1.25, 1.25, 1.25],
                 "foreground_oversample": 0.33},
        "network": {"name": "vnet", "base_filters": 8, "dropout": True},
        "train": {"iterations": 2000, "labeled_batch": 2, "unlabeled_batch": 2, "lr": 0.01, "lr_step": 1250,
                  "val_every": 200, "checkpoint_every": 100, "log_every": 10},
        "inference": {"overlap": 0.5, "mc_samples": 4},
        # UA-MT's ramps scaled from 6000 iterations (40 "epochs" of 150) to 2000 (40 of 50);
        # the learning-rate step keeps the paper's 2500/6000 fraction (rounded, 1250).
        "method_params": {"uamt": {"mc_samples": 4, "iterations_per_epoch": 50, "consistency_on_labeled": False},
                          "mean_teacher": {"iterations_per_epoch": 50, "consistency_on_labeled": False},
                          "ucmt": {"iterations_per_epoch": 50}},
    },
    "paper": {
        "data": {"modality": "MR", "spatial_dims": 3, "patch_size": [112, 112, 80]},
        "network": {"name": "vnet", "base_filters": 16, "dropout": True},
        "train": {"iterations": 6000, "labeled_batch": 2, "unlabeled_batch": 2, "lr": 0.01, "lr_step": 2500,
                  "val_every": 500, "checkpoint_every": 200, "log_every": 20},
        "inference": {"overlap": 0.5, "mc_samples": 8},
        "method_params": {"uamt": {"mc_samples": 8}},
    },
}
# UCMT trains with AdamW at a constant rate (UCMT paper).
METHOD_TRAIN = {"ucmt": {"optimizer": "adamw", "lr": 1e-4, "lr_schedule": "constant", "weight_decay": 1e-4}}
# Named variants. ``ucmt_sgd`` trains UCMT with the recipe every other row uses: the setting's SGD
# schedule and the 0.99 teacher EMA decay of UA-MT (also UCMT's code value). The
# paper's 0.999 averages ~1000 iterations, half of this run, and the teacher is the
# network that predicts; AdamW 1e-4 at a constant rate learned slowly at 800
# iterations (docs/benchmarks.md).
VARIANTS = {"ucmt_sgd": Variant("ucmt", params={"ema_alpha": 0.99}, train={}),
            # The effect of bf16 autocast on a CPU with native bf16 (train.amp_cpu), same seed.
            "uamt_fp32": Variant("uamt", train={"amp_cpu": False}),
            "uamt_bf16": Variant("uamt", train={"amp_cpu": True}),
            # Issue 14: the same recipe and seed on a CPU with and without native bf16 ("auto").
            "supervised_fp32": Variant("supervised", train={"amp_cpu": False}),
            # Issue 14 failure analysis: a report case whose atrium is much darker than in training.
            "supervised_intensity": Variant("supervised", data={"intensity_augment": True}),
            "uamt_intensity": Variant("uamt", data={"intensity_augment": True})}


def sparse_label(source: Path, every: int, target: Path) -> float:
    """Write ``source`` with only every ``every``-th z slice kept, the rest
    :data:`SPARSE_IGNORE_VALUE`; returns the fraction of voxels left labeled."""
    import numpy as np
    import SimpleITK as sitk

    img = sitk.ReadImage(str(source))
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    keep = np.zeros(arr.shape[0], dtype=bool)
    keep[::every] = True
    arr[~keep] = SPARSE_IGNORE_VALUE
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(target), useCompression=True)
    return float(keep.mean())


def write_split(data: Path, labeled: int, out: Path, sparse_every: int | None = None) -> Path:
    spec = json.loads((data / "dataset.json").read_text())
    cases = spec["training"]
    if len(cases) < labeled + VALIDATION_CASES:
        raise SystemExit(f"{data}: {len(cases)} cases, need at least {labeled + VALIDATION_CASES}")
    absolute = [{"image": str(data / c["image"]), "label": str(data / c["label"])} for c in cases]
    labels = dict(spec.get("labels", {"0": "background", "1": "left atrium"}))
    training = absolute[:labeled]
    if sparse_every:
        labels["ignore"] = SPARSE_IGNORE_VALUE
        training = [
            {"image": c["image"], "label": str(out / "sparse_labels" / Path(c["label"]).name)} for c in training
        ]
        for source, sparse in zip(absolute[:labeled], training):
            sparse_label(Path(source["label"]), sparse_every, Path(sparse["label"]))
    split = {
        "name": f"LA2018 {labeled} labeled" + (f", every {sparse_every}th slice" if sparse_every else ""),
        "labels": labels,
        "training": training,
        "unlabeled": [{"image": c["image"]} for c in absolute[labeled:-VALIDATION_CASES]],
        "validation": absolute[-VALIDATION_CASES:],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dataset.json"
    path.write_text(json.dumps(split, indent=1))
    return path


def write_fold_split(data: Path, labeled: int, out: Path, folds: int, fold: int) -> tuple[Path, Path, dict]:
    """Fold ``fold`` of ``folds``: the training split (labeled, unlabeled, validation) and
    the report split (its ``validation`` list is the fold's report set)."""
    spec = json.loads((data / "dataset.json").read_text())
    absolute = [{"image": str(data / c["image"]), "label": str(data / c["label"])} for c in spec["training"]]
    rest, report = kfold(absolute, folds, fold, group=lambda c: c["image"])
    if len(rest) < labeled + FOLD_VALIDATION:
        raise SystemExit(f"{data}: fold {fold} of {folds} leaves {len(rest)} cases, need {labeled + FOLD_VALIDATION}")
    labels = spec.get("labels", {"0": "background", "1": "left atrium"})
    split = {
        "name": f"LA2018 {labeled} labeled, fold {fold} of {folds}",
        "labels": labels,
        "training": rest[:labeled],
        "unlabeled": [{"image": c["image"]} for c in rest[labeled:-FOLD_VALIDATION]],
        "validation": rest[-FOLD_VALIDATION:],
    }
    out.mkdir(parents=True, exist_ok=True)
    train_path, report_path = out / "dataset.json", out / "dataset_report.json"
    train_path.write_text(json.dumps(split, indent=1))
    report_path.write_text(json.dumps({"name": f"LA2018 fold {fold} of {folds} (report)", "labels": labels,
                                       "training": rest[:labeled], "validation": report}, indent=1))
    name = lambda c: Path(c["image"]).name.split(".")[0]  # noqa: E731
    info = {"folds": folds, "fold": fold, "report": [name(c) for c in report],
            "validation": [name(c) for c in split["validation"]], "labeled": [name(c) for c in split["training"]],
            "unlabeled": len(split["unlabeled"])}
    return train_path, report_path, info


def scaled(setting: dict, method: str, iterations: int | None) -> tuple[dict, dict]:
    """Train and method settings for ``iterations``: the step of the learning rate and the
    ramps ("epochs") keep the fraction of the run they have in the setting."""
    train = dict(setting["train"])
    params = dict(setting["method_params"].get(method, {}))
    if iterations and iterations != train["iterations"]:
        factor = iterations / train["iterations"]
        train["lr_step"] = max(1, round(train["lr_step"] * factor))
        if "iterations_per_epoch" in params:
            params["iterations_per_epoch"] = max(1, round(params["iterations_per_epoch"] * factor))
        train["iterations"] = iterations
    return train, params


def run_method(method: str, setting: dict, dataset: Path, out: Path, cache: Path, iterations: int | None, seed: int,
               threads: int, report: Path | None = None) -> dict:
    # Cross-validation keeps each seed's run apart (training resumes from its folder's last.pt).
    run = out / (f"{method}-s{seed}" if report else method)
    run.mkdir(parents=True, exist_ok=True)
    v = variant(method, VARIANTS)
    name = v.method
    base_train, params = scaled(setting, name, iterations)
    params = {**params, **v.resolve_params(base_train["iterations"])}
    train = {**base_train, **v.train_overrides(METHOD_TRAIN), "seed": seed}
    # Cross-validation: the largest-component decision of the fold's validation cases.
    run_setting = {**setting, "data": {**setting["data"], **v.data},
                   "inference": {**setting["inference"], **({"largest_component": "auto"} if report else {})}}
    write_run_config(run, run_setting, dataset, cache, name, params, train)
    env = child_env(threads)
    with open(run / "stdout.jsonl", "a") as stdout:
        _, peak_rss_mib = train_in_subprocess(run, env, stdout)
    # progress.jsonl holds every attempt of a resumed run (this call's may have trained nothing).
    events = progress_events(run / "progress.jsonl")
    rates = iteration_rates(events)
    report = report or dataset
    images = [c["image"] for c in json.loads(report.read_text())["validation"]]
    # The last checkpoint, not best.pt: best.pt is selected on these same 16 cases.
    predict_s, metrics = predict_and_evaluate(run / "checkpoints" / "last.pt", images, run / "predictions", report,
                                              "validation", env)
    mean = metrics["summary"]["mean"]
    per_case = {r["case"]: r["mean"]["dice"] for r in metrics["cases"]}
    return {
        "per_case_dice": per_case,
        "dice_summary": case_summary(list(per_case.values())),
        "method": method,
        "iterations": train["iterations"],
        "seed": seed,
        "threads": threads,
        "method_params": params,
        "optimizer": f"{train.get('optimizer', 'sgd')} lr {train['lr']} {train.get('lr_schedule', 'step')}",
        "dice": mean["dice"]["mean"] * 100,
        "jaccard": mean["jaccard"]["mean"] * 100,
        "hd95_mm": mean["hd95"]["mean"],
        "asd_mm": mean["asd"]["mean"],
        "it_per_s": rates[-1] if rates else None,
        "train_minutes": training_seconds(events) / 60,
        "attempts": attempt_count(events),
        "predict_seconds_per_case": predict_s / len(images),
        "peak_rss_mib": peak_rss_mib,
        "training_switches": training_switches(run),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    ap.add_argument("--labeled", type=int, default=16)
    ap.add_argument("--methods", nargs="+", default=["supervised", "uamt"])
    ap.add_argument("--iterations", type=int, help="override the setting's iteration count")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--sparse-every", type=int, help="label only every N-th z slice of the labeled cases (the rest "
                    "'ignore'); the report cases stay fully labeled")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_la")
    ap.add_argument("--cache-dir", type=Path, help="preprocessed-volume cache (default <out>/cache); safe to share "
                    "between runs, entries are keyed by file and preprocessing settings")
    # One thread per process: two benchmark processes then share 2 cores without OpenMP spinning.
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS); default 1")
    ap.add_argument("--folds", type=int, help="K-fold cross-validation over the shared cases (with --fold)")
    ap.add_argument("--fold", type=int, help="the fold reported on, 0..K-1")
    args = ap.parse_args()
    args.out = args.out.resolve()
    if not (args.data / "dataset.json").exists():
        raise SystemExit(f"LA2018 not found at {args.data}: this benchmark needs the shared datasets")
    if (args.folds is None) != (args.fold is None):
        raise SystemExit("--folds and --fold go together")
    report, fold_tag, split_info = None, "", None
    if args.folds:
        out = args.out / f"fold{args.fold}of{args.folds}"
        dataset, report, split_info = write_fold_split(args.data, args.labeled, out, args.folds, args.fold)
        fold_tag = f"/fold{args.fold}of{args.folds}"
    else:
        out = args.out
        dataset = write_split(args.data, args.labeled, args.out, args.sparse_every)
    results_path = args.out / "results.json"
    for method in args.methods:
        iterations = args.iterations or SETTINGS[args.setting]["train"]["iterations"]
        key = f"{args.setting}/{args.labeled}/{method}/{iterations}" + (f"{fold_tag}/s{args.seed}" if fold_tag else "")
        key += f"/sparse{args.sparse_every}" if args.sparse_every else ""
        print(f"== {key}", file=sys.stderr, flush=True)
        result = run_method(method, SETTINGS[args.setting], dataset, out, (args.cache_dir or args.out / "cache").resolve(),
                            args.iterations, args.seed, args.threads, report)
        if split_info:
            result["split"] = split_info
        result["labels"] = f"every {args.sparse_every}th z slice" if args.sparse_every else "full"
        merge_result(results_path, key, result)
    results = read_results(results_path)
    print("| key | Dice % | median | worst | 5th pct | cases < 0.5 | Jaccard % | 95HD mm | ASD mm | it/s | train min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in results.items():
        d = r.get("dice_summary") or {}
        pct = lambda k: f"{d[k] * 100:.1f}" if k in d else "-"  # noqa: E731
        print(f"| {key} | {r['dice']:.2f} | {pct('median')} | {pct('worst')} | {pct('p5')} | {d.get('under_0.5', '-')} | "
              f"{r['jaccard']:.2f} | {r['hd95_mm']:.2f} | {r['asd_mm']:.2f} | {r['it_per_s'] or 0:.2f} | {r['train_minutes']:.1f} |")
    pooled = pooled_table(results, "cases")
    if pooled:
        print(pooled)

if __name__ == "__main__":
    main()
