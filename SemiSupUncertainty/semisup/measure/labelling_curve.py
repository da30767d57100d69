"""Results of a simulated labelling loop: the CSV, paired tests per budget and the curve.

One *row* per (seed, strategy, round): the number of labeled volumes and the mean
foreground Dice on the fixed held-out set (plus per-case Dice for the paired test).

Paired tests (each strategy against ``random`` at each budget, the same seeds):

- ``t_test_p``: paired t-test over seeds of the mean held-out Dice (``scipy.stats.ttest_rel``);
- ``wilcoxon_p``: Wilcoxon signed-rank test over (seed, held-out case) pairs. Cases of one
  seed share a model, so this p-value is optimistic; read it with the seed-level test.

``None`` with a reason where a test is undefined (one seed, all differences zero).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["CSV_FIELDS", "curve_summary", "markdown_table", "paired_tests", "write_labelling_results", "BASELINE"]

BASELINE = "random"
CSV_FIELDS = (
    "seed", "strategy", "round", "n_labeled", "dice", "auroc", "picked_next", "labeled", "warm_start_from",
    "train_seconds",
)


def curve_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (strategy, n_labeled): mean, standard deviation (ddof=0), min and max over seeds of the
    held-out Dice, and ``worst_case``, the lowest Dice of one held-out case over every seed
    (``None`` when the rows carry no per-case Dice)."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], int(r["n_labeled"])), []).append(r)
    out = []
    for (strategy, n), members in sorted(groups.items()):
        arr = np.asarray([float(r["dice"]) for r in members])
        cases = [float(v) for r in members for v in (r.get("case_dice") or {}).values()]
        out.append({
            "strategy": strategy, "n_labeled": n, "seeds": int(arr.size), "dice_mean": float(arr.mean()),
            "dice_std": float(arr.std(ddof=0)), "dice_min": float(arr.min()), "dice_max": float(arr.max()),
            "worst_case": min(cases) if cases else None,
        })
    return out


def markdown_table(curve: Sequence[Mapping[str, Any]], tests: Sequence[Mapping[str, Any]]) -> str:
    """The curve and the paired tests against the baseline as one Markdown table (``labelling.md``)."""
    by_test = {(t["strategy"], int(t["n_labeled"])): t for t in tests}

    def p(value: Any) -> str:
        return "-" if value is None else f"{value:.3g}"

    lines = [
        "| labeled | strategy | seeds | held-out Dice, mean ± std over seeds | min / max over seeds | worst case | "
        f"vs {BASELINE}: mean diff, wins/losses, t-test p, Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(curve, key=lambda c: (int(c["n_labeled"]), c["strategy"] != BASELINE, c["strategy"])):
        t = by_test.get((c["strategy"], int(c["n_labeled"])))
        vs = (f"{t['mean_difference'] * 100:+.2f}, {t['wins']}/{t['losses']}, {p(t['t_test_p'])}, {p(t['wilcoxon_p'])}"
              if t else "-")
        worst = "-" if c.get("worst_case") is None else f"{c['worst_case'] * 100:.1f}"
        lines.append(
            f"| {c['n_labeled']} | {c['strategy']} | {c['seeds']} | {c['dice_mean'] * 100:.2f} ± {c['dice_std'] * 100:.2f} | "
            f"{c['dice_min'] * 100:.1f} / {c['dice_max'] * 100:.1f} | {worst} | {vs} |"
        )
    return "\n".join(lines) + "\n"


def paired_tests(rows: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """Each strategy against ``baseline`` at each budget, paired by seed (and held-out case)."""
    by_key = {(r["strategy"], int(r["n_labeled"]), int(r["seed"])): r for r in rows}
    strategies = sorted({r["strategy"] for r in rows} - {baseline})
    budgets = sorted({int(r["n_labeled"]) for r in rows})
    out = []
    for strategy in strategies:
        for n in budgets:
            seeds = sorted(s for (st, nn, s) in by_key if st == strategy and nn == n and (baseline, n, s) in by_key)
            if not seeds:
                continue
            diff = np.array([by_key[(strategy, n, s)]["dice"] - by_key[(baseline, n, s)]["dice"] for s in seeds])
            res: dict[str, Any] = {
                "strategy": strategy, "baseline": baseline, "n_labeled": n, "seeds": len(seeds),
                "mean_difference": float(diff.mean()), "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
                "t_test_p": None, "wilcoxon_p": None, "reasons": {},
            }
            if len(seeds) < 2:
                res["reasons"]["t_test_p"] = "one seed: no paired test over seeds"
            elif np.allclose(diff, diff[0]):
                res["reasons"]["t_test_p"] = "identical differences over seeds: t-test undefined"
            else:
                res["t_test_p"] = float(stats.ttest_rel([by_key[(strategy, n, s)]["dice"] for s in seeds],
                                                        [by_key[(baseline, n, s)]["dice"] for s in seeds]).pvalue)
            case_diff = []
            for s in seeds:
                a, b = by_key[(strategy, n, s)].get("case_dice", {}), by_key[(baseline, n, s)].get("case_dice", {})
                case_diff += [a[c] - b[c] for c in sorted(set(a) & set(b))]
            case_diff_arr = np.asarray(case_diff)
            if case_diff_arr.size == 0 or np.all(case_diff_arr == 0):
                res["reasons"]["wilcoxon_p"] = "no non-zero per-case difference"
            else:
                res["wilcoxon_p"] = float(stats.wilcoxon(case_diff_arr).pvalue)
                res["case_pairs"] = int(case_diff_arr.size)
            out.append(res)
    return out


def _atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _render(summary: Sequence[Mapping[str, Any]], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for strategy in sorted({s["strategy"] for s in summary}):
        pts = [s for s in summary if s["strategy"] == strategy]
        n = np.array([p["n_labeled"] for p in pts])
        mean = np.array([p["dice_mean"] for p in pts])
        std = np.array([p["dice_std"] for p in pts])
        ax.plot(n, mean, "o-", label=f"{strategy} (seeds: {max(p['seeds'] for p in pts)})")
        ax.fill_between(n, mean - std, mean + std, alpha=0.2)
    ax.set_xticks(sorted({int(s["n_labeled"]) for s in summary}))
    ax.set_xlabel("labeled volumes")
    ax.set_ylabel("Dice on the held-out set (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_labelling_results(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, settings: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``labelling.csv``, ``labelling.json`` (rows, curve, paired tests, settings), ``labelling.md``
    (:func:`markdown_table`) and ``labelling.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "picked_next": " ".join(r.get("picked_next", [])), "labeled": " ".join(r.get("labeled", []))})
    paths = {"csv": out / "labelling.csv", "json": out / "labelling.json", "figure": out / "labelling.png",
             "markdown": out / "labelling.md"}
    _atomic(paths["csv"], buf.getvalue().encode())
    summary = curve_summary(rows)
    tests = paired_tests(rows)
    doc = {"settings": dict(settings), "curve": summary, "paired_tests": tests, "rows": list(rows)}
    _atomic(paths["markdown"], markdown_table(summary, tests).encode())

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    _atomic(paths["json"], (json.dumps(clean(doc), indent=2, allow_nan=False) + "\n").encode())
    title = f"{settings.get('dataset_name', '')} {settings.get('method', '')}, held-out {settings.get('eval_cases', '?')} cases"
    _atomic(paths["figure"], _render(summary, title.strip()))
    return paths
