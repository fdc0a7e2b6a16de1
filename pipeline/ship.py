"""What to ship on each target, chosen by one rule from the run's accuracy and latency tables.

Per target, among the student artifacts that run in its runtime:
1. accuracy: drop those more than `quantize.max_drop` top-1 points below the torch fp32 student;
2. budgets: where latency is known, drop those over the target's p90 latency or memory budget; known means
   measured on the device when any row was, else predicted from public measurements (a target naming a
   public device), else timed on this host as a proxy;
3. speed: keep the fastest by p90, and every artifact within 5% of it (equally fast); where nothing was
   timed (Core ML off macOS), keep them all and say so;
4. ties: the smaller file, then the higher top-1, then the profile's preferred precision.
A step that would drop every candidate is skipped, and the reason says so. No torch here.
"""
from __future__ import annotations

import math

from targets.numerics import Numerics

SAME_SPEED = 1.05  # p90 within 5% of the fastest counts as equally fast
Z95 = 1.96


def difference_interval(top1: float, reference: float, agreement: float, images: int) -> tuple[float, float]:
    """A 95% interval for (top1 - reference) in points, from paired predictions on the same images.

    The images on which the two models disagree bound the discordant pairs of McNemar's test
    (b + c <= disagreements): using that bound makes the normal-approximation interval conservative.
    """
    n = max(images, 1)
    d = (top1 - reference) / 100
    discordant = max(1.0 - agreement, abs(d))
    spread = Z95 * math.sqrt(max(discordant / n - d * d / n, 0.0))
    return round(100 * (d - spread), 2), round(100 * (d + spread), 2)


def choose(name: str, target: dict, rows: list[dict], evaluation: dict, max_drop: float) -> dict | None:
    """The artifact to ship on one target, with the evidence and the reason in words (None: no artifact)."""
    runtimes = [target["runtime"], *target.get("runtimes", [])]
    evaluated = [r for r in evaluation.get("artifacts", []) if r["runtime"] in runtimes]
    scored = {r["artifact"]: r for r in evaluation.get("artifacts", []) if "top1" in r}
    reference = scored.get("torch_fp32")
    timed = {r["artifact"]: r for r in best_evidence(rows)}
    candidates = [a for a in scored.values() if a["runtime"] in runtimes]
    if evaluated and not candidates:
        return {"target": name, "artifact": None, "why": f"no {target['runtime']} artifact has a top-1: "
                                                          f"{evaluated[0].get('reason', 'not evaluated')}"}
    if not candidates or reference is None:
        return None
    why: list[str] = []

    def keep(pool: list[dict], kept: list[dict], step: str) -> list[dict]:
        if kept:
            return kept
        why.append(f"no artifact passes {step}: that step is skipped")
        return pool

    pool = keep(candidates, [a for a in candidates if reference["top1"] - a["top1"] <= max_drop],
                f"the accuracy budget (max_drop {max_drop:g} points)")
    if any(a["artifact"] in timed for a in pool):
        budgets = [a for a in pool if a["artifact"] in timed and timed[a["artifact"]]["budget"]["latency_ok"]
                   and timed[a["artifact"]]["budget"]["memory_ok"]]
        pool = keep(pool, budgets, f"{name}'s latency and memory budgets")
    fastest = min((timed[a["artifact"]]["latency_ms"]["p90"] for a in pool if a["artifact"] in timed), default=None)
    if fastest is None:
        why.append("nothing was timed on this target, so the smallest file within the accuracy budget ships")
    else:
        pool = [a for a in pool if a["artifact"] in timed
                and timed[a["artifact"]]["latency_ms"]["p90"] <= fastest * SAME_SPEED]
    preferred = target.get("precision")
    best = min(pool, key=lambda a: (a["bytes"], -a["top1"], Numerics.of(a).kind != preferred))
    row = timed.get(best["artifact"])
    interval = difference_interval(best["top1"], reference["top1"], best["agreement"], evaluation["images"])
    choice = {"target": name, "artifact": best["artifact"], "runtime": best["runtime"],
              "precision": best["precision"], "top1": best["top1"], "delta_top1": round(best["top1"] -
                                                                                       reference["top1"], 2),
              "delta_interval": list(interval), "within_noise": interval[0] <= 0 <= interval[1],
              "evaluation": best["evaluation"], "bytes": best["bytes"],
              "label": row["label"] if row else next((r["label"] for r in rows if r["artifact"] == best["artifact"]),
                                                     "not timed"),
              "latency_ms": {k: row["latency_ms"][k] for k in ("p50", "p90")} if row else None}
    if row and row["label"] == "predicted":
        p = row["predicted"]
        why.append(f"latency predicted for {p['device']} ({p['runtime']}, {p['precision']}) from public "
                   f"measurements of {p['models']} models, interval {p['interval_ms'][0]:.3g}-"
                   f"{p['interval_ms'][1]:.3g} ms: not measured")
    choice["why"] = "; ".join([*_reasons(best, pool, candidates, timed, reference, max_drop, fastest), *why])
    return choice


EVIDENCE = ("measured", "predicted", "proxy")  # which latency rows decide, best first


def best_evidence(rows: list[dict]) -> list[dict]:
    """A target's latency rows of the best kind it has: measured on the device, else predicted, else proxy."""
    timed = [r for r in rows if "latency_ms" in r]
    for label in EVIDENCE:
        if any(r["label"] == label for r in timed):
            return [r for r in timed if r["label"] == label]
    return timed


def _reasons(best: dict, pool: list[dict], candidates: list[dict], timed: dict, reference: dict, max_drop: float,
             fastest: float | None) -> list[str]:
    reasons = []
    if fastest is not None:
        tied = [a["artifact"] for a in pool if a is not best]
        reasons.append("fastest p90 within the budgets" + (f" (equal within 5% to {', '.join(tied)}: smaller "
                                                            "file wins)" if tied else ""))
    for other in candidates:
        if other is best or other["artifact"] not in timed or best["artifact"] not in timed:
            continue
        if Numerics.of(other).quantized and not Numerics.of(best).quantized:
            speed = timed[best["artifact"]]["latency_ms"]["p90"] / timed[other["artifact"]]["latency_ms"]["p90"]
            if speed < 1:
                reasons.append(f"`{other['artifact']}` runs at {speed:.2f}x its speed, so float ships")
        if reference["top1"] - other["top1"] > max_drop:
            reasons.append(f"`{other['artifact']}` loses {reference['top1'] - other['top1']:.2f} points, over "
                           f"max_drop {max_drop:g}")
    return reasons


def choose_all(report: dict) -> dict[str, dict]:
    """target name -> choice (or a reason why nothing ships there)."""
    latency, evaluation = report.get("latency") or {}, report.get("evaluation") or {}
    max_drop = report["config"]["quantize"]["max_drop"]
    ship = {}
    for name, target in (latency.get("targets") or {}).items():
        rows = [r for r in latency["rows"] + latency.get("predicted", []) if r["target"] == name]
        ship[name] = choose(name, target, rows, evaluation, max_drop) or \
            {"target": name, "artifact": None, "why": f"no {target['runtime']} artifact in this run: enable its "
                                                      "export (and quantize) section"}
    return ship
