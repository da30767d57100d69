"""The harness every benchmark in this folder shares (not part of the library).

Settings of child processes (:func:`child_env`), timing of a training child
(:func:`train_in_subprocess`), named variants of a method (:class:`Variant`), the
device's matmul rate, and JSON output (:func:`command_header`, :func:`run_header`,
:func:`write_json`, :func:`merge_result`), so that each ``bench_*.py`` file holds its
experiment and nothing else.

The benchmarks run as ``python benchmarks/<name>.py``, which puts this folder on
``sys.path``; torch is imported inside the functions that need it, so the sweep
scripts that only start ``semisup`` subprocesses do not load it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
#: The library of this checkout: the children get it as PYTHONPATH (:func:`child_env`), and a
#: sweep script reads their output with it too, whatever (if any) copy pip installed.
LIBRARY = REPO / "SemiSupUncertainty"
if str(LIBRARY) not in sys.path:
    sys.path.insert(0, str(LIBRARY))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def child_env(threads: int) -> dict[str, str]:
    """Environment of a ``python -m semisup`` child: ``threads`` CPU threads, the library importable."""
    return {**os.environ, **{k: str(threads) for k in THREAD_VARIABLES}, "PYTHONPATH": str(LIBRARY)}


def train_in_subprocess(run: Path, env: dict[str, str], stdout: Any, stderr: Any = None) -> tuple[float, float]:
    """``semisup train --resume`` of the run folder ``run`` as a child process.

    Returns the wall seconds and the peak RSS in MiB. The peak is ``RUSAGE_CHILDREN``:
    the largest child of this process so far, an upper bound for later runs of a sweep.
    """
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "semisup", "train", "--run-dir", str(run), "--resume", "--progress", "json"],
                   check=True, env=env, stdout=stdout, stderr=stderr)
    seconds = time.time() - t0
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def write_run_config(run: Path, setting: dict[str, Any], dataset: Path, cache: Path, method: str,
                     params: dict[str, Any], train: dict[str, Any]) -> None:
    """``run/config.yaml`` for one method of a setting (data, network, inference from ``setting``)."""
    import yaml

    cfg = {
        "data": {**setting["data"], "dataset": str(dataset), "cache_dir": str(cache)},
        "network": setting["network"],
        "method": {"name": method, "params": params},
        "train": train,
        "inference": setting["inference"],
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def progress_events(progress: Path) -> list[dict[str, Any]]:
    """The events of a JSON-lines progress stream (docs/worker-protocol.md), as their records.

    Read with the protocol's own parser: the truncated last line of a killed run, a stray
    print or an unknown event is skipped, never an exception.
    """
    from semisup.protocol import parse_line

    events = (parse_line(line) for line in Path(progress).read_text().splitlines())
    return [e.raw for e in events if e is not None]


def attempt_count(events: list[dict[str, Any]]) -> int:
    """How many times the run was started (1 + its resumes), from its :func:`progress_events`."""
    return sum(1 for e in events if e["event"] == "start")


def training_seconds(events: list[dict[str, Any]]) -> float:
    """Seconds of training over every attempt of a run, from its :func:`progress_events`
    (``progress.jsonl`` is appended across resumes): each ``start`` to that attempt's last event."""
    total, start, last = 0.0, None, None
    for e in events:
        if e.get("event") == "start":
            if start is not None and last is not None:
                total += last - start
            start = e["time"]
        last = e.get("time", last)
    if start is not None and last is not None:
        total += last - start
    return total


def iteration_rates(events: list[dict[str, Any]]) -> list[float]:
    """The ``it_per_s`` values of the iteration events."""
    return [e["it_per_s"] for e in events if e["event"] == "iteration" and e.get("it_per_s")]


def predict_and_evaluate(checkpoint: Path, images: list[str], predictions: Path, dataset: Path, split: str,
                         env: dict[str, str], extra: list[str] = ()) -> tuple[float, dict[str, Any]]:
    """``semisup predict`` then ``semisup evaluate`` as child processes.

    Returns the prediction wall seconds and the ``metrics.json`` of the evaluation.
    """
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "semisup", "predict", "--checkpoint", str(checkpoint), "--input", *images,
                    "--output-dir", str(predictions), *extra, "--progress", "none"], check=True, env=env)
    seconds = time.time() - t0
    subprocess.run([sys.executable, "-m", "semisup", "evaluate", "--predictions", str(predictions), "--dataset",
                    str(dataset), "--split", split, "--progress", "none"], check=True, env=env)
    return seconds, json.loads((Path(predictions) / "metrics.json").read_text())


@dataclass(frozen=True)
class Variant:
    """A registered method with one thing changed, to explain a benchmark row.

    ``params`` values are constants or functions of the iteration budget; ``train``,
    when given, replaces the script's per-method train overrides (``METHOD_TRAIN``);
    ``data`` is merged into the setting's data section.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def resolve_params(self, iterations: int) -> dict[str, Any]:
        return {k: v(iterations) if callable(v) else v for k, v in self.params.items()}

    def train_overrides(self, method_train: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return method_train.get(self.method, {}) if self.train is None else self.train


def variant(name: str, variants: dict[str, Variant]) -> Variant:
    """The named variant, or the registered method ``name`` unchanged."""
    return variants.get(name, Variant(name))


def matmul_tflops(device: Any, dtype: Any = None, n: int = 4096, reps: int = 5) -> float:
    """Dense matmul rate, best of ``reps``: the device's attainable rate (TFLOP/s).

    On the CPU from process CPU time per thread, which other jobs' load does not inflate.
    """
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t0, (time.process_time() - c0) / torch.get_num_threads()
        best = min(best, wall if device.type == "cuda" else cpu)
    return 2 * n**3 / best / 1e12


def command_header() -> dict[str, Any]:
    """Date and command line: the head of every JSON report."""
    return {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.executable).name, *sys.argv])}


def run_header(device: Any) -> dict[str, Any]:
    """:func:`command_header` plus the device and torch version, for in-process benchmarks."""
    import torch

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)")
    return {**command_header(), "device": name, "torch": torch.__version__}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: a killed benchmark leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(path: Path) -> dict[str, Any]:
    """The results file of a sweep, or ``{}`` before its first result."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def merge_result(path: Path, key: str, value: Any) -> dict[str, Any]:
    """Add one result to a sweep's results file and return the whole file.

    Re-reads before writing under an exclusive lock on ``<path>.lock``: benchmark
    processes running side by side (other folds, seeds or methods) share the file, and
    an unlocked read-modify-write could drop the result of the one that wrote first.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = read_results(path)
        results[key] = value
        write_json(path, results)
    return results


def training_switches(run: Path) -> str | None:
    """What ``train.channels_last`` / ``train.amp_cpu`` resolved to in a run, from its
    ``train.log`` (``None`` where the log has no such line). Recorded with each result:
    the same config trains in bf16 on a CPU with native bf16 and in fp32 elsewhere."""
    log = Path(run) / "train.log"
    if not log.exists():
        return None
    marker = "training switches: "
    lines = [line.split(marker, 1)[1].strip() for line in log.read_text(errors="replace").splitlines() if marker in line]
    return lines[-1] if lines else None


# ----------------------------------------------------------------------------- cross-validation


#: Seed of the fold assignment: fixed, so every method and seed of a sweep sees the same folds.
FOLD_SEED = 0


def kfold(items: list[Any], k: int, fold: int, group: Any = None, seed: int = FOLD_SEED) -> tuple[list[Any], list[Any]]:
    """K-fold split of ``items`` by group: ``(rest, report)`` for fold ``fold`` of ``k``.

    Items of one group (``group(item)``, e.g. an ACDC patient; default the item itself)
    always land in the same fold. Groups are shuffled with a fixed seed, then dealt
    round-robin, so fold sizes differ by at most one group; over ``fold = 0..k-1`` the
    report sets are disjoint and cover every item. Both lists keep ``items``' order.
    """
    if not 2 <= k <= len(items):
        raise ValueError(f"--folds must be between 2 and the number of cases ({len(items)}), got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"--fold must be in 0..{k - 1}, got {fold}")
    key = group or (lambda x: x)
    groups: list[Any] = []
    for item in items:
        g = key(item)
        if g not in groups:
            groups.append(g)
    if len(groups) < k:
        raise ValueError(f"{len(groups)} groups cannot fill {k} folds")
    order = list(groups)
    import random

    random.Random(seed).shuffle(order)
    report_groups = set(order[fold::k])
    report = [x for x in items if key(x) in report_groups]
    rest = [x for x in items if key(x) not in report_groups]
    return rest, report


def case_summary(values: list[float]) -> dict[str, float]:
    """What a user of the next case cares about: mean, median, worst case, 5th percentile
    (numpy's linear interpolation) and the number of cases under 0.5."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no cases to summarise")
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "worst": float(v.min()),
        "p5": float(np.percentile(v, 5)),
        "under_0.5": int((v < 0.5).sum()),
        "cases": int(v.size),
    }


def patient_of(case: str) -> str:
    """``patient038`` from a case id or path such as ``./imagesTr/patient038_frame01.nrrd``
    (ACDC: the frames of one patient share it)."""
    return Path(case).name.split("_")[0]


def paired_comparison(candidate: dict[str, float], baseline: dict[str, float],
                      group: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Candidate against baseline over the cases both have (case -> Dice): how many cases
    are better, the mean difference and the paired Wilcoxon p (1.0 when all differences are 0).

    With ``group`` (case -> unit, e.g. :func:`patient_of`) the test runs on each unit's
    mean difference, as the cases of one unit (two frames of a patient) are not
    independent samples; ``units`` counts them (the cases without ``group``)."""
    from scipy.stats import wilcoxon

    common = sorted(set(candidate) & set(baseline))
    diffs = [candidate[c] - baseline[c] for c in common]
    per_unit: dict[str, list[float]] = {}
    for case, d in zip(common, diffs):
        per_unit.setdefault(group(case) if group else case, []).append(d)
    unit_diffs = [sum(v) / len(v) for v in per_unit.values()]
    return {
        "cases": len(common),
        "better": sum(d > 0 for d in diffs),
        "mean_difference": sum(diffs) / len(diffs) if diffs else float("nan"),
        "units": len(per_unit),
        "p": float(wilcoxon(unit_diffs).pvalue) if any(unit_diffs) else 1.0,
    }


def comparison_cell(vs: dict[str, Any], unit: str | None = None) -> str:
    """``better/cases, +mean diff, p`` for a table; ``unit`` names what the test paired when grouped."""
    tested = f" ({vs['units']} {unit})" if unit else ""
    return f"{vs['better']}/{vs['cases']}, {vs['mean_difference'] * 100:+.2f}, p = {vs['p']:.3g}{tested}"


def pooled_folds(results: dict[str, dict[str, Any]], baseline: str = "supervised",
                 group: Callable[[str], str] | None = None) -> dict[str, dict[str, Any]]:
    """Per method, the per-case Dice of every fold pooled (mean over seeds per case),
    its :func:`case_summary`, and the paired Wilcoxon test against ``baseline`` over
    the cases both have. ``results`` values need ``method``, ``per_case_dice`` and a
    ``split`` with ``folds`` (other entries are ignored); ``group`` as in
    :func:`paired_comparison`."""
    per_method: dict[str, dict[str, list[float]]] = {}
    for r in results.values():
        if not (r.get("split") or {}).get("folds") or "per_case_dice" not in r:
            continue
        cases = per_method.setdefault(r["method"], {})
        for case, dice in r["per_case_dice"].items():
            cases.setdefault(case, []).append(float(dice))
    means = {m: {c: sum(v) / len(v) for c, v in cases.items()} for m, cases in per_method.items()}
    out: dict[str, dict[str, Any]] = {}
    for method, cases in means.items():
        row: dict[str, Any] = {**case_summary(list(cases.values())), "seeds_per_case": max(len(v) for v in per_method[method].values())}
        base = means.get(baseline)
        if base is not None and method != baseline:
            row["vs_baseline"] = paired_comparison(cases, base, group)
        out[method] = row
    return out


def pooled_table(results: dict[str, Any], unit: str = "cases", group: Callable[[str], str] | None = None,
                 group_unit: str = "patients") -> str:
    """The Markdown table of :func:`pooled_folds` (empty when no fold was run); ``unit`` names a
    row's items; with ``group`` the test pairs ``group_unit`` (see :func:`paired_comparison`)."""
    pooled = pooled_folds(results, group=group)
    if not pooled:
        return ""
    tested = f" over {group_unit}" if group else ""
    lines = [f"\nFolds pooled (each of the {unit} once, mean over seeds; paired Wilcoxon vs supervised{tested}):\n",
             f"| method | {unit} | mean Dice % | median | worst | 5th pct | < 0.5 | vs supervised: better, mean diff, p |",
             "|---|---|---|---|---|---|---|---|"]
    for method, r in pooled.items():
        vs = r.get("vs_baseline")
        cmp = comparison_cell(vs, group_unit if group else None) if vs else "-"
        lines.append(f"| {method} | {r['cases']} | {r['mean'] * 100:.2f} | {r['median'] * 100:.1f} | {r['worst'] * 100:.1f} | "
                     f"{r['p5'] * 100:.1f} | {r['under_0.5']} | {cmp} |")
    return "\n".join(lines)
