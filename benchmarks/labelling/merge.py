"""Merge the results of ``semisup simulate-labelling`` runs that ran seeds in separate processes.

Two loops on a 2-core machine finish sooner as two processes (``--seeds 0 1`` and
``--seeds 2``); their rows are the same experiment only when every setting but the seeds
agrees, which is checked here before anything is written.

Example::

    python benchmarks/labelling/merge.py runs/loop_la runs/loop_la_s2 --output runs/loop_la_all
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semisup.measure.labelling_curve import write_labelling_results

#: Settings that may differ between the merged runs.
PER_RUN = ("seeds", "seconds")


def merge(folders: list[Path], output: Path) -> dict[str, Path]:
    docs = [json.loads((f / "labelling.json").read_text()) for f in folders]
    first = {k: v for k, v in docs[0]["settings"].items() if k not in PER_RUN}
    for folder, doc in zip(folders[1:], docs[1:]):
        other = {k: v for k, v in doc["settings"].items() if k not in PER_RUN}
        differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differ:
            raise SystemExit(f"{folder}: settings differ from {folders[0]} in {', '.join(differ)}: not one experiment")
    seen: dict[int, Path] = {}
    for folder, doc in zip(folders, docs):
        for seed in {int(r["seed"]) for r in doc["rows"]}:
            if seed in seen:
                raise SystemExit(f"seed {seed} is in both {seen[seed]} and {folder}")
            seen[seed] = folder
    rows = [r for doc in docs for r in doc["rows"]]
    settings = {**docs[0]["settings"], "seeds": sorted(seen), "seconds": sum(d["settings"].get("seconds", 0) for d in docs),
                "merged_from": [str(f) for f in folders]}
    return write_labelling_results(rows, output, settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="--output folders of simulate-labelling")
    ap.add_argument("--output", required=True, type=Path)
    args = ap.parse_args()
    paths = merge(args.folders, args.output)
    print(paths["markdown"].read_text())


if __name__ == "__main__":
    main()
