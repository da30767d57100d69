from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

stop = {"requested": False}


def emit(event: str, **fields) -> None:
    record = {"event": event, "time": round(time.time(), 3), **fields}
    if os.environ.get("SEMISUP_VALIDATE_EVENTS") == "1":  # the stand-in speaks the same schema as the real worker
        from semisup.protocol import validate

        problems = validate(record)
        assert not problems, problems
    line = json.dumps(record)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if emit.log_path is not None:
        with open(emit.log_path, "a") as fh:
            fh.write(line + "\n")


emit.log_path = None


def error(message: str, code: int, kind: str = "DataError") -> int:
    emit("error", message=message, type=kind)
    print(f"error: {message}", file=sys.stderr)
    return code


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def check_dataset(cfg: dict, dataset_path: Path) -> tuple[list, list, list, list[str]]:
    if not dataset_path.is_file():
        raise FileNotFoundError(f"dataset file not found: {dataset_path}")
    ds = json.loads(dataset_path.read_text())
    root = dataset_path.parent
    classes = [ds["labels"][k] for k in sorted(ds["labels"], key=int) if int(k) > 0]
    for entry in ds.get("training", []) + ds.get("validation", []):
        image = sitk.ReadImage(str(root / entry["image"]))
        label = sitk.ReadImage(str(root / entry["label"]))
        if image.GetSize() != label.GetSize() or not np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4) or not np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-6) or not np.allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-6):
            raise ValueError(f"{entry['label']}: geometry differs from its image {entry['image']}")
        values = np.unique(sitk.GetArrayViewFromImage(label))
        if values.max() > len(classes):
            raise ValueError(f"{entry['label']}: label value {values.max()} but only {len(classes)} classes")
    for entry in ds.get("unlabeled", []):
        if not (root / entry["image"]).is_file():
            raise FileNotFoundError(f"{entry['image']}: file not found")
    return ds.get("training", []), ds.get("validation", []), ds.get("unlabeled", []), classes


def cmd_train(args) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    emit.log_path = run_dir / "progress.jsonl"
    config = Path(args.config) if args.config else run_dir / "config.yaml"
    if not config.is_file():
        return error(f"config file not found: {config}", 2, "ConfigError")
    cfg = yaml.safe_load(config.read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    dataset = Path(cfg["data"]["dataset"])
    if not dataset.is_absolute():
        dataset = config.parent / dataset
    try:
        training, validation, unlabeled, classes = check_dataset(cfg, dataset)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        return error(str(exc), 2)
    if args.config:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg)) if Path(args.config).resolve() != (run_dir / "config.yaml").resolve() else None
    iterations = int(cfg["train"]["iterations"])
    val_every = int(cfg["train"].get("val_every", 200))
    ckpt_every = int(cfg["train"].get("checkpoint_every", 100))
    delay = float(os.environ.get("SEMISUP_STANDIN_DELAY", "0.01"))
    fail_at = int(os.environ.get("SEMISUP_STANDIN_FAIL_AT", "0"))
    last = run_dir / "checkpoints" / "last.pt"
    best = run_dir / "checkpoints" / "best.pt"
    start_it, best_dice = 0, None
    if args.resume and last.is_file():
        state = json.loads(last.read_text())
        start_it, best_dice = state["iteration"], state.get("best_dice")
    if os.environ.get("SEMISUP_STANDIN_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__("requested", True))
        signal.signal(signal.SIGINT, lambda *a: stop.__setitem__("requested", True))
    child = None
    if os.environ.get("SEMISUP_STANDIN_SPAWN_CHILD") == "1":
        child = subprocess.Popen([sys.executable, "-c", "import time, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        (run_dir / "child.pid").write_text(str(child.pid))
    emit("start", run_dir=str(run_dir), method=cfg["method"]["name"], iterations=iterations, start_iteration=start_it, device="cpu", device_name="CPU (stand-in)", amp=False, version="standin", labeled_cases=len(training), unlabeled_cases=len(unlabeled), validation_cases=len(validation))
    t0 = time.time()
    it = start_it
    while it < iterations:
        time.sleep(delay)
        it += 1
        if fail_at and it == fail_at:
            print("Traceback (most recent call last):\n  File \"trainer.py\", line 1\nRuntimeError: stand-in failure", file=sys.stderr)
            return error(f"stand-in failure at iteration {it}: CUDA out of memory", 1, "RuntimeError")
        loss = 1.0 / (1 + 0.1 * it)
        rate = (it - start_it) / max(time.time() - t0, 1e-6)
        emit("iteration", iteration=it, iterations=iterations, loss=loss, losses={"supervised": loss * 0.9, "consistency": loss * 0.1}, lr=0.01, it_per_s=rate, eta_seconds=(iterations - it) / rate)
        if validation and it % val_every == 0:
            dice = 1 - loss
            is_best = best_dice is None or dice > best_dice
            best_dice = dice if is_best else best_dice
            if is_best:
                write_atomic(best, {"iteration": it, "classes": classes})
                emit("checkpoint", iteration=it, kind="best", path=str(best))
            emit("validation", iteration=it, dice=dice, dice_per_class={c: dice for c in classes}, best_dice=best_dice, is_best=is_best)
        if it % ckpt_every == 0 or it == iterations:
            write_atomic(last, {"iteration": it, "best_dice": best_dice, "classes": classes})
            emit("checkpoint", iteration=it, kind="last", path=str(last))
        cancel_file = run_dir / "cancel.request"  # semisup.protocol.CANCEL_FILE
        deaf = os.environ.get("SEMISUP_STANDIN_IGNORE_SIGTERM") == "1"  # a worker that answers no request
        if stop["requested"] or (cancel_file.exists() and not deaf):
            cancel_file.unlink(missing_ok=True)
            write_atomic(last, {"iteration": it, "best_dice": best_dice, "classes": classes})
            emit("cancelled", iteration=it, checkpoint=str(last))
            if child:
                child.kill()
            return 3
    if not best.exists():
        write_atomic(best, {"iteration": it, "classes": classes})
    emit("done", iteration=it, best_dice=best_dice, best_checkpoint=str(best), last_checkpoint=str(last), seconds=time.time() - t0)
    if child:
        child.kill()
    return 0


def cmd_plan(args) -> int:
    """A worker that exits 0 but wrote no plan (the logic must not call that planned)."""
    emit("plan", config=None, fingerprint=None, budget="cpu", method="supervised", iterations=1)
    return 0


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nrrd", ".nii", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def cmd_predict(args) -> int:
    run_dir = Path(args.run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.exists():
        ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.exists():
        return error(f"{run_dir}: no checkpoints/best.pt or checkpoints/last.pt: has this run been trained?", 2, "CheckpointError")
    classes = json.loads(ckpt.read_text())["classes"]
    out = Path(args.output_dir or run_dir / "predictions")
    out.mkdir(parents=True, exist_ok=True)
    emit("predict_start", cases=len(args.input), mc_samples=args.mc_samples or 8, device="cpu")
    rows = []
    t0 = time.time()
    for index, path in enumerate(args.input, start=1):
        path = Path(path)
        if not path.is_file():
            return error(f"{path}: file not found", 2)
        image = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(image).astype(np.float64)
        edges = np.quantile(arr, np.linspace(0, 1, len(classes) + 2)[1:-1])
        label = np.digitize(arr, edges).astype(np.uint8)  # 0..len(classes)
        distance = np.min(np.abs(arr[..., None] - edges[None]), axis=-1)
        uncertainty = np.exp(-distance / (arr.std() + 1e-6) * 10).astype(np.float32)
        name = case_name(path)
        outputs = {"label": out / f"{name}_label.nrrd", "uncertainty": out / f"{name}_uncertainty.nrrd"}
        for kind, data in (("label", label), ("uncertainty", uncertainty)):
            img = sitk.GetImageFromArray(data)
            img.CopyInformation(image)
            sitk.WriteImage(img, str(outputs[kind]), True)
        fg = label > 0
        scores = {"mean_uncertainty_foreground": float(uncertainty[fg].mean()) if fg.any() else 0.0, "mean_uncertainty_image": float(uncertainty.mean()), "foreground_voxels": int(fg.sum())}
        rows.append({"case": name, **scores})
        emit("predicted", index=index, total=len(args.input), case=name, outputs={k: str(v) for k, v in outputs.items()}, scores=scores)
        time.sleep(float(os.environ.get("SEMISUP_STANDIN_DELAY", "0.01")))
    csv_path = out / "scores.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    emit("predict_done", cases=len(rows), scores_csv=str(csv_path), seconds=time.time() - t0)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="semisup_standin")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--config")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--progress", default="auto")
    p = sub.add_parser("predict")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--output-dir")
    p.add_argument("--mc-samples", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", default="auto")
    p = sub.add_parser("plan")
    p.add_argument("dataset")
    p.add_argument("--output")
    p.add_argument("--device", default="auto")
    p.add_argument("--budget-minutes", type=float)
    args = parser.parse_args()
    print("stand-in worker starting", file=sys.stderr)
    return {"train": cmd_train, "predict": cmd_predict, "plan": cmd_plan}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
