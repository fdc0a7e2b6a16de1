"""How well the latency predictor predicts a model it has never seen: every candidate kind fitted per
(device, runtime, precision) on the public NPU measurements, scored leave-one-family-out (all variants of
one architecture held out together), the kind with the lowest error chosen and written to
targets/predict/predictor.json with its per-device error and interval, each family's leave-one-model-out
error (what a prediction for a member of that family states) and the error of fitting the device from its
sibling (targets/predict/predictor.SIBLINGS); the full comparison goes to JSON.

    .venv/bin/python bench/latency_predictor.py [--out bench/results/latency_predictor.json]

Needs no network: it reads the committed tables (targets/predict/measurements.csv, features.csv).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.fileio import write_json  # noqa: E402
from targets.predict.predictor import KINDS, LEVEL, PREDICTOR_FILE, datasets, details, evaluate_kind  # noqa: E402
from targets.predict.zoo import STUDENT_FAMILY  # noqa: E402
from targets.profiles import builtin_profiles  # noqa: E402

TOP_DEVICES = 6  # the docs/targets.md table: the devices with the most public data
GOAL = 0.25  # the goal: median error <= 25% on the NPU rows of the devices with most data


def name(key: tuple[str, str, str]) -> str:
    return " | ".join(key)


def summary(results: dict[str, dict]) -> dict:
    """One kind over all data sets: the median of the data sets' median errors, the worst median, and the
    pooled interval coverage."""
    medians = [r["median_ape"] for r in results.values()]
    return {"median_of_median_ape": round(float(np.median(medians)), 4), "worst_median_ape": max(medians),
            "median_p90_ape": round(float(np.median([r["p90_ape"] for r in results.values()])), 4),
            "coverage": round(float(np.average([r["coverage"] for r in results.values()],
                                               weights=[r["models"] for r in results.values()])), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency_predictor.json"))
    args = parser.parse_args(argv)
    console = Console()
    data = datasets()
    by_kind, factors = {}, {}
    for kind in KINDS:
        with console.status(f"{kind}: {len(data)} data sets, leave-one-family-out"):
            factors[kind], by_kind[kind] = evaluate_kind(kind, data)
    summaries = {kind: {**summary(results), "band_stretch": factors[kind]} for kind, results in by_kind.items()}
    best = min(summaries, key=lambda k: summaries[k]["median_of_median_ape"])
    counts: dict[str, int] = {}
    for key, d in data.items():
        counts[key[0]] = counts.get(key[0], 0) + len(d.ms)
    top = sorted(counts, key=lambda dev: (-counts[dev], dev))[:TOP_DEVICES]
    named = sorted({p.public_device for p in builtin_profiles().values() if p.public_device})
    with console.status(f"{best}: per-family (leave-one-model-out) and sibling-device errors"):
        chosen = {name(key): {**by_kind[best][name(key)], **details(key, data, best)} for key in data}
    top_rows = {k: v for k, v in chosen.items() if k.split(" | ")[0] in top}
    shown = {k: v for k, v in chosen.items() if k.split(" | ")[0] in [*top, *named]}
    write_json(PREDICTOR_FILE, {
        "kind": best, "level": LEVEL, "band_stretch": factors[best], "datasets": chosen,
        "chosen_by": "lowest median over data sets of the leave-one-family-out median absolute percentage error "
                     "(bench/latency_predictor.py)"})
    write_json(args.out, {"command": "python bench/latency_predictor.py", "level": LEVEL, "kinds": summaries,
                          "chosen": best, "goal_median_ape": GOAL, "top_devices": top, "named_devices": named,
                          "goal_met_on_top_devices": {
                              precision: all(v["median_ape"] <= GOAL for k, v in top_rows.items()
                                             if k.endswith(f" | {precision}"))
                              for precision in sorted({k.split(" | ")[2] for k in top_rows})},
                          "by_kind": by_kind})
    table = Table(title=f"leave-one-family-out error by kind ({len(data)} device/runtime/precision data sets)")
    for column in ("kind", "median of median APE", "worst median APE", "median P90 APE", f"{LEVEL:.0%} coverage",
                   "band stretch"):
        table.add_column(column)
    for kind, s in summaries.items():
        table.add_row(kind + (" (chosen)" if kind == best else ""), f"{s['median_of_median_ape']:.1%}",
                      f"{s['worst_median_ape']:.1%}", f"{s['median_p90_ape']:.1%}", f"{s['coverage']:.1%}",
                      f"{s['band_stretch']:.2f}")
    console.print(table)
    console.print(f"\n| device | runtime | precision | models (families) | new family: median / P90 APE | "
                  f"{STUDENT_FAMILY} family, one model held out: median / P90 APE (models) | sibling device: "
                  f"median / P90 APE | {LEVEL:.0%} interval coverage |\n|---|---|---|---:|---:|---:|---|---:|")
    for key, r in sorted(shown.items()):
        own, sib = r["by_family"].get(STUDENT_FAMILY), r["sibling"]
        console.print(f"| {' | '.join(key.split(' | '))} | {r['models']} ({r['families']}) | {r['median_ape']:.0%} / "
                      f"{r['p90_ape']:.0%} | " + (f"{own['median_ape']:.0%} / {own['p90_ape']:.0%} ({own['models']})"
                                                  if own else "-")
                      + " | " + (f"{sib['device']}: {sib['median_ape']:.0%} / {sib['p90_ape']:.0%}" if sib else "-")
                      + f" | {r['coverage']:.0%} |", soft_wrap=True)
    console.print(f"\nchosen: {best}; wrote {PREDICTOR_FILE} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
