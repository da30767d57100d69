#!/usr/bin/env python3
"""ACDC benchmark (issue #5): every registered method on the same 7 labeled patients.

Protocol (../shared/data/README.md, SSL4MIS): 2D slice-wise training
(``data.spatial_dims: 2``, the SSL4MIS 2D U-Net with 16 base filters, dropout on).
The labeled set is the first 7 distinct patients of ``training`` in list order (10 %,
both frames of each, 14 volumes, 136 slices; checked by the patient id in the file
names); the other 63 training patients are used WITHOUT their labels. Figures are on
the 20 volumes (10 patients) of ``validation``, which are never trained on. The
held-back ACDC test set (20 patients) is not in the shared copy.

No model selection on the reporting set: the training split handed to
``semisup train`` has no validation list, so the engine never validates, and the
figures are those of the LAST checkpoint (``checkpoints/last.pt``). SSL4MIS instead
selects on its validation set and reports on the test set; we cannot, having no
test set, and selecting on the reporting set would flatter every method.

Settings (same network, iterations, batch, optimizer and seed for every method;
UCMT alone uses AdamW 1e-4 at a constant rate, as in its paper):
  cpu    in-plane resampling to 2 voxel units (``target_spacing [2, 2, 1]``; the
         files say 1 mm but the true spacing is unknown, so this only halves each
         slice for speed, it is not a physical spacing), 96x96 patches (the halved
         slices are 77-214 x 77-256, median 108 x 128: a 96 crop holds the heart),
         batch 4 labeled + 4 unlabeled, 400 iterations, SGD lr 0.01 poly, T = 4 MC
         passes for the methods that sample (UA-MT, UA-DCT). Measured on a shared
         2-core CPU (docs/benchmarks.md): supervised 3.1 it/s (2 min), CPS and DUST
         0.9 it/s (7 min), UA-MT 0.5 it/s (13 min), UCMT 0.4 it/s (16 min).
  paper  native grid, 256x256 patches, batch 12 + 12, 30000 iterations, SGD 0.01
         poly, T = 8 (SSL4MIS; needs a GPU).

Method schedules given in "epochs" are scaled to the iteration budget so that every
ramp and stage ends inside it (``method_params`` below; the paper setting gives the
reference values). Named variants (``VARIANTS``: ``coranet_pretrain_half``,
``uadct_ce_dice``, ``ucmt_sgd``) change one thing of a method, to explain a row.

Each (method, seed) runs ``semisup train`` then ``semisup predict`` (one
deterministic pass, ``--mc-samples 1``, as SSL4MIS tests) and ``semisup evaluate``
as subprocesses. Distances are in voxels: this copy writes spacing 1 along every
axis, so the through-plane voxel counts as 1 as well. Results go to
``<out>/results.json`` and a markdown table on stdout; a rerun skips the
(setting, iterations, seed, method) entries already there unless ``--force``, and an
interrupted training resumes from its ``last.pt``.

Cross-validation (``--folds K --fold i``, issue 14): all 80 shared patients (training
and validation lists) are dealt into K folds by patient (``harness.kfold``, fixed
seed); fold i's volumes are the report set, never trained on or used to choose
anything. Of the other patients (list order) the first 7 are labeled, the last
``FOLD_VALIDATION_PATIENTS`` are the validation set (the largest-component decision,
``inference.largest_component: auto``), the rest are unlabeled. The summary adds the
median, worst case, 5th percentile and cases under 0.5 mean Dice; the folds-pooled paired
test is over patients (the mean of a patient's two frames, not independent cases).

Example::

    python benchmarks/bench_acdc.py --setting cpu --out runs/bench_acdc_cpu
    python benchmarks/bench_acdc.py --setting cpu --folds 5 --fold 0 --methods supervised uamt ucmt_sgd --out runs/bench_acdc_cv
    python benchmarks/bench_acdc.py --setting cpu --methods supervised uamt --iterations 20 --out runs/bench_acdc_smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    attempt_count,
    case_summary,
    kfold,
    Variant,
    child_env,
    iteration_rates,
    merge_result,
    patient_of,
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ACDC"
LABELED_PATIENTS = 7
#: Validation patients of a cross-validation fold (from the end of the non-report patients).
FOLD_VALIDATION_PATIENTS = 4
CLASSES = ("right ventricle", "myocardium", "left ventricle")
SHORT = {"right ventricle": "RV", "myocardium": "Myo", "left ventricle": "LV"}
# Cheapest first after the three with published ACDC figures, so that an interrupted
# sweep has the most methods (UA-DCT and UCMT cost 3-4 supervised iterations each).
METHODS = ["supervised", "mean_teacher", "uamt", "coranet", "dust", "cps", "ucmt", "uadct"]

SETTINGS = {
    "cpu": {
        "data": {"modality": "MR", "spatial_dims": 2, "patch_size": [96, 96], "target_spacing": [2.0, 2.0, 1.0]},
        "network": {"name": "unet2d", "base_filters": 16, "dropout": True},
        "train": {"iterations": 400, "labeled_batch": 4, "unlabeled_batch": 4, "optimizer": "sgd", "lr": 0.01,
                  "lr_schedule": "poly", "weight_decay": 1e-4, "checkpoint_every": 100, "log_every": 10,
                  "device": "cpu"},
        "inference": {"overlap": 0.5, "sw_batch_size": 8, "mc_samples": 4},
        "mc_samples": 4,
        # UCMT's EMA decay: the code's 0.99; the paper's 0.999 averages ~1000 iterations,
        # longer than this whole run, so the teacher would stay an early student.
        "ucmt_ema_alpha": 0.99,
    },
    "paper": {
        "data": {"modality": "MR", "spatial_dims": 2, "patch_size": [256, 256]},
        "network": {"name": "unet2d", "base_filters": 16, "dropout": True},
        "train": {"iterations": 30000, "labeled_batch": 12, "unlabeled_batch": 12, "optimizer": "sgd", "lr": 0.01,
                  "lr_schedule": "poly", "weight_decay": 1e-4, "checkpoint_every": 500, "log_every": 50},
        "inference": {"overlap": 0.5, "sw_batch_size": 8, "mc_samples": 8},
        "mc_samples": 8,
        "ucmt_ema_alpha": 0.999,
    },
}
# UCMT trains with AdamW at a constant rate (UCMT paper).
METHOD_TRAIN = {"ucmt": {"optimizer": "adamw", "lr": 1e-4, "lr_schedule": "constant", "weight_decay": 1e-4}}
PAPER_ITERATIONS = 30000
# Named variants (parameter values may be functions of the iteration budget).
# CoraNet variants locate its ACDC collapse (docs/benchmarks.md): at 400 iterations
# even pre-training alone barely segments, so self-training starts from background-only
# pseudo labels; half the run of pre-training is still too short at 400 and lifts the
# result from 58 to 70 mean Dice at 2000.
# UA-DCT's supervised term is the paper's (uncertainty-weighted) CE; every other method
# here has a Dice term, so this variant adds the soft Dice to it.
VARIANTS = {"coranet_pretrain_half": Variant("coranet", params={"pretrain_iterations": lambda n: n // 2}),
            # CoraNet's Dice terms over the batch (SSL4MIS) instead of per slice.
            "coranet_batch_dice": Variant("coranet", params={"dice_over_batch": True}),
            # Pre-training for the whole run: is the main head learning at all?
            "coranet_pretrain_only": Variant("coranet", params={"pretrain_iterations": lambda n: n}),
            "uadct_ce_dice": Variant("uadct", params={"sup_loss": "ce_dice"}),
            # UCMT with the SGD schedule of every other row instead of its paper's AdamW.
            "ucmt_sgd": Variant("ucmt", train={})}


def method_params(method: str, setting: dict, iterations: int) -> dict:
    """Method constants with their ramps and stages scaled to ``iterations``.

    Each schedule keeps the fraction of the run it has in the method's reference
    code, so it ends inside any budget (exact at the paper budget of 30000):

    - SSL4MIS 2D ramps (MT, UA-MT, CPS): ``iteration // 150`` over 200 epochs, i.e.
      the whole run; here ``iterations_per_epoch = iterations // 200`` (150 at 30000)
      and a ramp of ``iterations / iterations_per_epoch`` epochs (200 at 30000).
    - UA-DCT (DCT-seg ACDC, 120 epochs): ramps over 100 epochs (5/6 of the run),
      uncertainty weighting from epoch 20 (1/6).
    - UCMT (code): lambda ramped over 5 passes over the unlabeled slices, ~1180 / 12
      ~ 100 iterations each at the paper batch: 1/60 of the run.
    - CoraNet (paper IV-A): 30 passes of pre-training (1/10 of the run), pseudo labels
      refreshed every 5 passes (1/60); the code's CE + Dice losses (see below).
    - DUST (paper 4.2): three phases of equal length: pre-training, stage 1 (the
      reliable half of the unlabeled cases), stage 2 (all of them) to the end.
    """
    n = iterations
    mc = setting["mc_samples"]
    if method in ("mean_teacher", "uamt", "cps"):
        per_epoch = max(1, n // 200)
        params = {"consistency_rampup": n / per_epoch, "iterations_per_epoch": per_epoch}
        return {**params, "mc_samples": mc} if method == "uamt" else params
    if method == "uadct":
        per_epoch = max(1, n // 120)
        return {"mc_samples": mc, "iterations_per_epoch": per_epoch, "rampup_epochs": 100 / 120 * n / per_epoch,
                "unsup_uncertainty_start": round(n / 6)}
    if method == "ucmt":
        per_epoch = max(1, n // 300)
        return {"rampup_epochs": n / 60 / per_epoch, "iterations_per_epoch": per_epoch,
                "ema_alpha": setting["ucmt_ema_alpha"]}
    if method == "coranet":
        # Labeled loss and certain-region loss of the authors' code (with Dice): the
        # paper's CE-only Eq. 1 predicted background everywhere after 400 iterations
        # (Dice 0 on every report case, docs/benchmarks.md); every other method's
        # supervised term has Dice too.
        return {"iterations_per_epoch": max(1, n // 300), "pretrain_iterations": round(n / 10),
                "refresh_every": max(1, round(n / 60)), "supervised": "code", "certain_dice": True}
    if method == "dust":
        third = max(3, n // 3)
        return {"pretrain_iterations": third, "stage_iterations": third}
    return {}


def write_splits(data: Path, out: Path) -> tuple[Path, Path, dict]:
    """The training split (no validation list) and the evaluation split; returns both
    paths and a description of the split for results.json."""
    spec = json.loads((data / "dataset.json").read_text())
    cases = [{"image": str((data / c["image"]).resolve()), "label": str((data / c["label"]).resolve())}
             for c in spec["training"]]
    validation = [{"image": str((data / c["image"]).resolve()), "label": str((data / c["label"]).resolve())}
                  for c in spec.get("validation", [])]
    patients: list[str] = []
    for c in cases:
        if patient_of(c["image"]) not in patients:
            patients.append(patient_of(c["image"]))
    labeled_ids = patients[:LABELED_PATIENTS]
    labeled = [c for c in cases if patient_of(c["image"]) in labeled_ids]
    unlabeled = [{"image": c["image"]} for c in cases if patient_of(c["image"]) not in labeled_ids]
    # The protocol's "first 14 volumes": must be the same cases (2 frames per patient, adjacent).
    if labeled != cases[: len(labeled)] or len(labeled) != 2 * LABELED_PATIENTS:
        raise SystemExit(f"{data}: the first {LABELED_PATIENTS} patients are not the first "
                         f"{2 * LABELED_PATIENTS} volumes of 'training' ({len(labeled)} volumes)")
    val_ids = sorted({patient_of(c["image"]) for c in validation})
    if not validation or set(val_ids) & set(patients):
        raise SystemExit(f"{data}: 'validation' is empty or shares patients with 'training'")
    labels = spec.get("labels", {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"})
    out.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = out / "dataset_train.json", out / "dataset_eval.json"
    base = {"labels": labels, "training": labeled}
    train_path.write_text(json.dumps({**base, "name": "ACDC 7 labeled patients (train)", "unlabeled": unlabeled}, indent=1))
    eval_path.write_text(json.dumps({**base, "name": "ACDC validation (report)", "validation": validation}, indent=1))
    info = {"labeled_patients": labeled_ids, "labeled_volumes": len(labeled),
            "unlabeled_patients": len(patients) - len(labeled_ids), "unlabeled_volumes": len(unlabeled),
            "report_patients": val_ids, "report_volumes": len(validation)}
    return train_path, eval_path, info


def write_fold_splits(data: Path, out: Path, folds: int, fold: int) -> tuple[Path, Path, dict]:
    """Fold ``fold`` of ``folds`` by patient: the training split (7 labeled patients,
    validation patients, the rest unlabeled) and the report split."""
    spec = json.loads((data / "dataset.json").read_text())
    absolute = [{"image": str((data / c["image"]).resolve()), "label": str((data / c["label"]).resolve())}
                for c in [*spec["training"], *spec.get("validation", [])]]
    rest, report = kfold(absolute, folds, fold, group=lambda c: patient_of(c["image"]))
    patients: list[str] = []
    for c in rest:
        if patient_of(c["image"]) not in patients:
            patients.append(patient_of(c["image"]))
    if len(patients) < LABELED_PATIENTS + FOLD_VALIDATION_PATIENTS + 1:
        raise SystemExit(f"{data}: fold {fold} of {folds} leaves {len(patients)} patients, too few")
    labeled_ids = patients[:LABELED_PATIENTS]
    val_ids = patients[-FOLD_VALIDATION_PATIENTS:]
    labeled = [c for c in rest if patient_of(c["image"]) in labeled_ids]
    validation = [c for c in rest if patient_of(c["image"]) in val_ids]
    unlabeled = [{"image": c["image"]} for c in rest if patient_of(c["image"]) not in {*labeled_ids, *val_ids}]
    labels = spec.get("labels", {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"})
    out.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = out / "dataset_train.json", out / "dataset_eval.json"
    train_path.write_text(json.dumps({"name": f"ACDC fold {fold} of {folds} (train)", "labels": labels, "training": labeled,
                                      "unlabeled": unlabeled, "validation": validation}, indent=1))
    eval_path.write_text(json.dumps({"name": f"ACDC fold {fold} of {folds} (report)", "labels": labels,
                                     "training": labeled, "validation": report}, indent=1))
    info = {"folds": folds, "fold": fold, "labeled_patients": labeled_ids, "validation_patients": val_ids,
            "unlabeled_volumes": len(unlabeled), "report_patients": sorted({patient_of(c["image"]) for c in report}),
            "report_volumes": len(report)}
    return train_path, eval_path, info


def run_method(method: str, setting_name: str, train_split: Path, eval_split: Path, out: Path,
               iterations: int, seed: int, threads: int, force: bool, folded: bool = False) -> dict:
    setting = SETTINGS[setting_name]
    run = out / f"{method}-s{seed}-{iterations}it"
    if force and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    # No validation list in the training split: val_every only matters if one is added.
    v = variant(method, VARIANTS)
    name = v.method
    params = {**method_params(name, setting, iterations), **v.resolve_params(iterations)}
    # Cross-validation folds validate once, at the end: the largest-component decision.
    train = {**setting["train"], **v.train_overrides(METHOD_TRAIN), "seed": seed, "iterations": iterations,
             "val_every": iterations if folded else iterations + 1}
    run_setting = {**setting, "inference": {**setting["inference"], **({"largest_component": "auto"} if folded else {})}}
    write_run_config(run, run_setting, train_split, out / "cache", name, params, train)
    env = child_env(threads)
    with open(run / "stdout.jsonl", "a") as stdout, open(run / "stderr.log", "a") as stderr:
        # The peak RSS is the largest child so far in this sweep, not this method alone.
        wall_s, peak_rss_mib = train_in_subprocess(run, env, stdout, stderr)
    events = progress_events(run / "progress.jsonl")
    rates = iteration_rates(events)
    images = [c["image"] for c in json.loads(eval_split.read_text())["validation"]]
    pred = run / "predictions"
    # The last checkpoint, one deterministic pass (dropout off), as SSL4MIS tests.
    predict_s, metrics = predict_and_evaluate(run / "checkpoints" / "last.pt", images, pred, eval_split, "validation",
                                              env, ["--mc-samples", "1", "--device", "cpu"])
    summary = metrics["summary"]
    per_class = {SHORT[c]: {m: summary["classes"][c][m]["mean"] for m in ("dice", "jaccard", "hd95", "asd")}
                 for c in CLASSES}
    mean = summary["mean"]
    per_case = {r["case"]: r["mean"]["dice"] for r in metrics["cases"]}
    return {
        "per_case_dice": per_case,
        "dice_summary": case_summary(list(per_case.values())),
        "method": method,
        "setting": setting_name,
        "seed": seed,
        "iterations": iterations,
        "cases": summary["n_cases"],
        "dice": mean["dice"]["mean"] * 100,
        "dice_std": mean["dice"]["std"] * 100,
        "dice_per_class": {k: v["dice"] * 100 for k, v in per_class.items()},
        "jaccard": mean["jaccard"]["mean"] * 100,
        "hd95_vox": mean["hd95"]["mean"],
        "asd_vox": mean["asd"]["mean"],
        "hd95_per_class": {k: v["hd95"] for k, v in per_class.items()},
        "asd_per_class": {k: v["asd"] for k, v in per_class.items()},
        "it_per_s": rates[-1] if rates else None,
        "train_minutes": training_seconds(events) / 60,
        "wall_minutes": wall_s / 60,
        "predict_seconds_per_case": predict_s / len(images),
        "peak_rss_mib": peak_rss_mib,
        "training_switches": training_switches(run),
        "threads": threads,
        "attempts": attempt_count(events),
        "method_params": params,
        "optimizer": f"{train['optimizer']} lr {train['lr']} {train['lr_schedule']}",
    }


def _pct(r: dict, key: str) -> str:
    d = r.get("dice_summary") or {}
    return f"{d[key] * 100:.1f}" if key in d else "-"


def table(results: dict) -> str:
    head = ("| setting | iters | seed | method | RV | Myo | LV | mean Dice % | median | worst | 5th pct | cases < 0.5 | "
            "95HD vox | ASD vox | it/s | train min |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    groups: dict[tuple, list[dict]] = {}
    for r in results.values():
        c = r["dice_per_class"]
        rows.append(f"| {r['setting']} | {r['iterations']} | {r['seed']} | {r['method']} | {c['RV']:.2f} | "
                    f"{c['Myo']:.2f} | {c['LV']:.2f} | {r['dice']:.2f} | {_pct(r, 'median')} | {_pct(r, 'worst')} | "
                    f"{_pct(r, 'p5')} | {r.get('dice_summary', {}).get('under_0.5', '-')} | {r['hd95_vox']:.2f} | {r['asd_vox']:.2f} | "
                    f"{r['it_per_s'] or 0:.2f} | {r['train_minutes']:.1f} |")
        groups.setdefault((r["setting"], r["iterations"], r["method"]), []).append(r)
    multi = {k: v for k, v in groups.items() if len(v) > 1}
    if multi:
        rows += ["", "Mean over seeds (mean Dice +- std over seeds):", "",
                 "| setting | iters | method | seeds | RV | Myo | LV | mean Dice % | 95HD vox | ASD vox |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for (setting, iters, method), rs in multi.items():
            avg = lambda f: statistics.mean(f(r) for r in rs)  # noqa: E731
            sd = statistics.stdev(r["dice"] for r in rs)
            rows.append(f"| {setting} | {iters} | {method} | {len(rs)} | {avg(lambda r: r['dice_per_class']['RV']):.2f} | "
                        f"{avg(lambda r: r['dice_per_class']['Myo']):.2f} | {avg(lambda r: r['dice_per_class']['LV']):.2f} | "
                        f"{avg(lambda r: r['dice']):.2f} +- {sd:.2f} | {avg(lambda r: r['hd95_vox']):.2f} | "
                        f"{avg(lambda r: r['asd_vox']):.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=[*METHODS, *VARIANTS])
    ap.add_argument("--iterations", type=int, help="override the setting's iteration count (ramps are rescaled)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337], help="e.g. --seeds 1337 1338 1339")
    # One thread: on a CPU shared with other jobs, two OpenMP threads per process
    # oversubscribe the cores and ran ~10x slower (UA-MT 0.055 vs 0.51 it/s, here).
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS); default 1")
    ap.add_argument("--force", action="store_true", help="rerun (from scratch) entries already in results.json")
    ap.add_argument("--out", type=Path, help="default: runs/bench_acdc_<setting>")
    ap.add_argument("--folds", type=int, help="K-fold cross-validation by patient over all 80 shared patients (with --fold)")
    ap.add_argument("--fold", type=int, help="the fold reported on, 0..K-1")
    args = ap.parse_args()
    if (args.folds is None) != (args.fold is None):
        raise SystemExit("--folds and --fold go together")
    out = (args.out or REPO / "runs" / f"bench_acdc_{args.setting}").resolve()
    if not (args.data / "dataset.json").exists():
        print(f"ACDC not found at {args.data}: this benchmark needs the shared datasets "
              "(../shared/data/ACDC); skipping.", file=sys.stderr)
        raise SystemExit(0)
    from semisup.methods import method_names

    missing = sorted({variant(m, VARIANTS).method for m in args.methods} - set(method_names()))
    if missing:
        raise SystemExit(f"method(s) {missing} are not registered; available: {method_names()}")
    iterations = args.iterations or SETTINGS[args.setting]["train"]["iterations"]
    fold_tag = f"/fold{args.fold}of{args.folds}" if args.folds else ""
    results_path = out / "results.json"  # one file for every fold of a sweep
    if args.folds:
        out = out / f"fold{args.fold}of{args.folds}"
        train_split, eval_split, split_info = write_fold_splits(args.data, out, args.folds, args.fold)
    else:
        train_split, eval_split, split_info = write_splits(args.data, out)
    print(f"split: {json.dumps(split_info)}", file=sys.stderr, flush=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for seed in args.seeds:
        for method in args.methods:
            key = f"{args.setting}/{iterations}/{seed}/{method}{fold_tag}"
            if key in results and not args.force:
                print(f"== {key}: in {results_path}, skipped (--force reruns it)", file=sys.stderr, flush=True)
                continue
            print(f"== {key} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
            try:
                r = run_method(method, args.setting, train_split, eval_split, out, iterations, seed, args.threads, args.force,
                               folded=bool(args.folds))
            except subprocess.CalledProcessError as exc:
                # Keep going: one method's failure must not cost the rest of the sweep.
                log = out / f"{method}-s{seed}-{iterations}it" / "stderr.log"
                tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else ""
                print(f"== {key} FAILED ({exc}); {log}:\n{tail}", file=sys.stderr, flush=True)
                continue
            r["split"] = split_info
            merge_result(results_path, key, r)
            print(f"== {key}: Dice {r['dice']:.2f}, {r['train_minutes']:.1f} min, {r['it_per_s'] or 0:.2f} it/s",
                  file=sys.stderr, flush=True)
    results = read_results(results_path)
    print(table(results))
    pooled = pooled_table(results, "volumes", group=patient_of)
    if pooled:
        print(pooled)

if __name__ == "__main__":
    main()
