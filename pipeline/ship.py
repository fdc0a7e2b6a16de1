"""What to ship on each target: one answer per runtime (SDK) an app on it may link, and one overall pick.

Per target and runtime, among that runtime's student artifacts (a file its quantizer marked `ship: false`, or
left over its accuracy budget on the validation images, never ships):
1. accuracy: drop those more than `quantize.max_drop` top-1 points below the torch fp32 student on the test
   split where the loss is real (the upper end of the change's 95% interval below zero); a runtime none of whose
   files is left ships nothing;
2. budgets: drop those over the target's p90 latency or memory budget where timed; an untimed file (Core ML
   off macOS) is held to the memory budget by an estimate: file bytes + activations (pipeline/activations.py);
3. speed: drop every file another one beats. A beats B when their medians' 95% intervals do not overlap and
   A's median is at least 5% lower (without intervals: the medians alone); overlap is a tie. Latency evidence:
   measured on the device, else predicted from public measurements, else this host (proxy);
4. ties, in a stated order: with ship.prefer = "accuracy" (the default) the files without a real accuracy loss
   (the upper end of its Δ top-1 interval is not below 0), of those the ones within 0.1 top-1 points of the
   most accurate, of those the smaller file; with "size" the smaller file first, then no real loss; last
   the profile's runtime order, then the artifact name.
The overall pick compares the runtimes' picks by step 3: it is *separated* when one pick beats every other;
otherwise the tie is broken by step 4 and the answer says so. Every step reads only the run's tables, so the
same tables give the same answers. A step that would drop every candidate is skipped, and the reason says so.
The rule reads typed rows (LatencyRow, Candidate, Evaluation), made from report.json's records by their from_dict
where the report enters (choose_all, choose_records); its answers are plain dicts, as report["ship"] holds them.
No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

import backends
from pipeline.core.intervals import difference_interval, over_budget
from pipeline.core.numerics import Numerics
from pipeline.core.section import Section
from targets.latency import FASTER, UNKNOWN, compare_latency

SAME_SPEED = 1.05  # a median less than 5% lower is not faster, whatever the intervals say
SAME_ACCURACY = 0.1  # top-1 points: with prefer = "accuracy", files this close to the best tied file are as accurate
EVIDENCE = ("measured", "predicted", "proxy")  # which latency rows decide, best first


class ShipConfig(Section):
    """How the ship rule (pipeline/ship.py) breaks ties between files that are equally fast."""

    prefer: Literal["accuracy", "size"] = Field(
        "accuracy", description="among equally fast files (or files nothing timed): accuracy = files without a "
                                f"real top-1 loss, within {SAME_ACCURACY:g} points of the most accurate, then the "
                                "smaller; size = the smaller file first")


@dataclass(frozen=True)
class Predicted:
    """What a predicted row's latency comes from: the public device, runtime and precision, how many public
    models the fit saw, and the interval (ms)."""

    device: str
    runtime: str
    precision: str
    models: int
    interval_ms: tuple[float, float]

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Predicted:
        """From a predicted row's `predicted` record (targets/predict/rows.py)."""
        lo, hi = record["interval_ms"]
        return cls(record["device"], record["runtime"], record["precision"], record["models"], (lo, hi))


@dataclass(frozen=True)
class LatencyRow:
    """One artifact on one target as the rule reads it: a benchmark row (measured, proxy, needs-device, error)
    or a predicted one. p50/p90 (ms) are None where it was not timed; the budget verdicts only mean anything
    where it was."""

    target: str
    artifact: str | None
    label: str
    p50: float | None = None
    p90: float | None = None
    p50_interval: tuple[float, float] | None = None
    latency_ok: bool = False
    memory_ok: bool = False
    predicted: Predicted | None = None
    confidence: float | None = None  # the interval's level: 0.95 for a timed median, the prediction's (0.8)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> LatencyRow:
        """From a row of report.json's latency.rows or latency.predicted."""
        latency, budget = record.get("latency_ms"), record.get("budget") or {}
        interval = (latency or {}).get("p50_interval")
        level = (latency or {}).get("confidence") or (record.get("predicted") or {}).get("level")
        return cls(record["target"], record.get("artifact"), record["label"],
                   latency["p50"] if latency else None, latency["p90"] if latency else None,
                   (interval[0], interval[1]) if interval else None,
                   budget.get("latency_ok", False), budget.get("memory_ok", False),
                   Predicted.from_dict(record["predicted"]) if "predicted" in record else None,
                   level if interval else None)

    @property
    def timed(self) -> bool:
        return self.p50 is not None

    def latency_record(self) -> dict[str, Any]:
        """The fields targets.latency.compare_latency reads to compare two medians."""
        latency = {"p50": self.p50, "p50_interval": list(self.p50_interval) if self.p50_interval else None}
        return {"target": self.target, "artifact": self.artifact, "latency_ms": latency if self.timed else None}


@dataclass(frozen=True)
class Candidate:
    """One evaluated artifact: its runtime, precision, numerics and size, and (where it was scored) its top-1 %
    and its agreement with the torch fp32 student; `reason` says why a file has no top-1."""

    artifact: str
    runtime: str
    precision: str
    evaluation: str
    bytes: int
    numerics: Numerics
    top1: float | None = None
    agreement: float | None = None
    reason: str | None = None
    file: str | None = None  # its file's name (an OpenVINO IR: the .xml; a Core ML package: the folder)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Candidate:
        """From a row of report.json's evaluation.artifacts."""
        return cls(record["artifact"], record["runtime"], record["precision"], record["evaluation"],
                   record["bytes"], Numerics.of(record), record.get("top1"), record.get("agreement"),
                   record.get("reason"), record.get("file"))

    @property
    def scored(self) -> bool:
        return self.top1 is not None


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's artifacts and how many test images scored them."""

    images: int
    artifacts: tuple[Candidate, ...]

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Evaluation:
        """From report.json's evaluation ({} where there is none)."""
        return cls(record.get("images", 0), tuple(Candidate.from_dict(r) for r in record.get("artifacts", [])))


def best_evidence(rows: list[LatencyRow]) -> list[LatencyRow]:
    """A target's latency rows of the best kind it has: measured on the device, else predicted, else proxy."""
    timed = [r for r in rows if r.timed]
    for label in EVIDENCE:
        if any(r.label == label for r in timed):
            return [r for r in timed if r.label == label]
    return timed


def beats(a: LatencyRow, b: LatencyRow) -> tuple[bool, dict]:
    """Whether latency row `a` is faster than row `b` (see the module's step 3), with the comparison."""
    c = compare_latency(a.latency_record(), b.latency_record())
    return c["speedup"] is not None and c["speedup"] >= SAME_SPEED and c["verdict"] in (FASTER, UNKNOWN), c


def ratio_text(c: dict) -> str:
    """`1.31x as fast (interval 1.20-1.45x)`: b's median over a's."""
    shown = f"{c['speedup']:.2f}x as fast"
    return shown + (f" (interval {c['interval'][0]:.2f}-{c['interval'][1]:.2f}x)" if c["interval"] else
                    " (no interval: too few runs)")


class Candidates:
    """One target's scored artifacts and their evidence: what the rule's steps read."""

    def __init__(self, name: str, target: dict, rows: list[LatencyRow], evaluation: Evaluation, max_drop: float,
                 prefer: str, unshippable: dict[str, str], activation_mb: float | None):
        self.name, self.target, self.max_drop, self.prefer = name, target, max_drop, prefer
        self.order = [target["runtime"], *(r for r in target.get("runtimes", []) if r != target["runtime"])]
        self.unshippable, self.activation_mb = unshippable, activation_mb
        self.images = evaluation.images
        self.scored = {a.artifact: a for a in evaluation.artifacts if a.scored}
        self.evaluated = [a for a in evaluation.artifacts if a.runtime in self.order]
        self.reference = self.scored.get("torch_fp32")
        self.timed = {r.artifact: r for r in best_evidence(rows)}
        self.rows = rows

    def interval(self, a: Candidate) -> tuple[float, float]:
        return difference_interval(a.top1, self.reference.top1, a.agreement, self.images)

    def over_budget(self, a: Candidate) -> bool:
        """More than max_drop points below the torch fp32 student, and a real loss (its interval says so)."""
        return over_budget(self.reference.top1 - a.top1, self.interval(a), self.max_drop)

    def break_tie(self, tied: list[Candidate]) -> Candidate:
        """The file step 4 picks among equally fast files (or files nothing timed)."""
        rank = {r: i for i, r in enumerate(self.order)}

        def last(a: Candidate) -> tuple:
            return rank.get(a.runtime, len(self.order)), a.artifact

        if self.prefer == "size":
            return min(tied, key=lambda a: (a.bytes, self.interval(a)[1] < 0, *last(a)))
        pool = [a for a in tied if self.interval(a)[1] >= 0] or tied
        top = max(a.top1 for a in pool)
        return min((a for a in pool if a.top1 >= top - SAME_ACCURACY), key=lambda a: (a.bytes, *last(a)))

    def tie_rule(self) -> str:
        first = (f"no real accuracy loss, then top-1 within {SAME_ACCURACY:g} points of the best, then the smaller "
                 "file" if self.prefer == "accuracy" else "the smaller file, then no real accuracy loss")
        return f"{first}, then {self.name}'s runtime order (ship.prefer = \"{self.prefer}\")"

    def memory_mb(self, a: Candidate) -> float | None:
        """Estimated memory of an untimed file: its bytes plus activations (fp16 compute for Core ML)."""
        if self.activation_mb is None:
            return None
        scale = 0.5 if a.runtime == "coreml" else 1.0
        return a.bytes / 1e6 + self.activation_mb * scale

    def fastest(self, pool: list[Candidate]) -> list[Candidate]:
        """The files no other file in `pool` beats (all of `pool` when none is timed)."""
        timed = [a for a in pool if a.artifact in self.timed]
        if not timed:
            return pool
        return [a for a in timed if not any(beats(self.timed[o.artifact], self.timed[a.artifact])[0]
                                            for o in timed if o is not a)]


def choose_runtime(c: Candidates, runtime: str) -> dict:
    """The file to ship for apps that link `runtime` on target c.name, with the evidence and the reason."""
    name = c.name
    evaluated = [a for a in c.evaluated if a.runtime == runtime]
    candidates = [a for a in c.scored.values() if a.runtime == runtime]
    if not evaluated:
        return {"target": name, "runtime": runtime, "artifact": None,
                "why": f"no {runtime} artifact in this run: enable its export (and quantize) section"}
    if not candidates or c.reference is None:
        reason = evaluated[0].reason if evaluated[0].reason is not None else "not evaluated"
        return {"target": name, "runtime": runtime, "artifact": None,
                "why": f"no {runtime} artifact has a top-1: {reason}"}
    why: list[str] = []
    blocked = [a for a in candidates if a.artifact in c.unshippable]
    candidates = [a for a in candidates if a.artifact not in c.unshippable]
    for a in blocked:
        why.append(f"`{a.artifact}` is marked ship: false ({c.unshippable[a.artifact]})")
    if not candidates:
        return {"target": name, "runtime": runtime, "artifact": None, "why": "; ".join(why)}

    def keep(pool: list[Candidate], kept: list[Candidate], step: str) -> list[Candidate]:
        if kept:
            return kept
        why.append(f"no artifact passes {step}: that step is skipped")
        return pool

    over = [a for a in candidates if c.over_budget(a)]
    why += [f"`{a.artifact}` loses {c.reference.top1 - a.top1:.2f} top-1 points (95% interval of the change "
            f"{c.interval(a)[0]:+.2f} to {c.interval(a)[1]:+.2f}), over max_drop {c.max_drop:g}" for a in over]
    pool = [a for a in candidates if a not in over]
    if not pool:
        return {"target": name, "runtime": runtime, "artifact": None, "why": "; ".join(why)}
    budget = c.target.get("memory_budget_mb")
    if any(a.artifact in c.timed for a in pool):
        within = [a for a in pool if a.artifact in c.timed and c.timed[a.artifact].latency_ok
                  and c.timed[a.artifact].memory_ok]
        pool = keep(pool, within, f"{name}'s latency and memory budgets")
    elif budget is not None and c.activation_mb is not None:
        within = [a for a in pool if c.memory_mb(a) <= budget]
        pool = keep(pool, within, f"{name}'s memory budget ({budget:g} MB, estimated)")
    fastest = c.fastest(pool)
    best = c.break_tie(fastest)
    choice = _choice(c, best)
    tied = [a.artifact for a in fastest if a is not best]
    if best.artifact in c.timed:
        scope = "" if any("that step is skipped" in w for w in why) else " within the budgets"
        why.insert(0, f"fastest{scope}" + (f" (ties within noise with {', '.join(tied)}: broken by "
                                           f"{c.tie_rule()})" if tied else ""))
    else:
        why.insert(0, f"nothing was timed for {runtime} on {name}, so the rule's order picks it among the files "
                      f"within the accuracy" + (" and memory budgets" if c.activation_mb is not None else " budget")
                   + f": {c.tie_rule()}")
    why += _reasons(c, best, candidates)
    choice["why"] = "; ".join(why)
    return choice


def _choice(c: Candidates, best: Candidate) -> dict:
    row = c.timed.get(best.artifact)
    interval = c.interval(best)
    choice = {"target": c.name, "artifact": best.artifact, "file": best.file, "runtime": best.runtime,
              "precision": best.precision, "top1": best.top1,
              "delta_top1": round(best.top1 - c.reference.top1, 2), "delta_interval": list(interval),
              "within_noise": interval[0] <= 0 <= interval[1], "evaluation": best.evaluation,
              "bytes": best.bytes,
              "label": row.label if row else next((r.label for r in c.rows if r.artifact == best.artifact),
                                                  "not timed"),
              "latency_ms": {"p50": row.p50, "p90": row.p90} if row else None}
    if row and row.p50_interval:
        choice["latency_ms"]["p50_interval"] = list(row.p50_interval)
        if row.confidence:
            choice["latency_ms"]["confidence"] = row.confidence
    if not row and c.memory_mb(best) is not None:
        choice["memory_mb_estimate"] = round(c.memory_mb(best), 2)
    return choice


def _reasons(c: Candidates, best: Candidate, candidates: list[Candidate]) -> list[str]:
    reasons = []
    row = c.timed.get(best.artifact)
    if row and row.label == "predicted" and row.predicted:
        p = row.predicted
        reasons.append(f"latency predicted for {p.device} ({p.runtime}, {p.precision}) from public "
                       f"measurements of {p.models} models, interval {p.interval_ms[0]:.3g}-"
                       f"{p.interval_ms[1]:.3g} ms: not measured")
    if not row and c.activation_mb is not None:
        reasons.append(f"memory estimated at {c.memory_mb(best):.1f} MB (file + activations) against "
                       f"{c.target.get('memory_budget_mb', 0):g} MB")
    for other in candidates:
        if other is best:
            continue
        if row and other.artifact in c.timed and other.numerics.quantized and not best.numerics.quantized:
            faster, cmp = beats(row, c.timed[other.artifact])
            if faster:
                reasons.append(f"`{other.artifact}` is slower: {best.artifact} is {ratio_text(cmp)}, "
                               "so float ships")
    return reasons


def choose(name: str, target: dict, rows: list[LatencyRow], evaluation: Evaluation, max_drop: float,
           prefer: str = "accuracy", unshippable: dict[str, str] | None = None,
           activation_mb: float | None = None) -> dict:
    """The answer for one target: by_runtime (runtime -> choice), and the overall pick's fields at the top with
    `overall` (its runtime, or None), `separated` and `overall_why`. `target`: its profile (runtime, runtimes,
    memory_budget_mb); `rows`: its latency rows."""
    c = Candidates(name, target, rows, evaluation, max_drop, prefer, unshippable or {}, activation_mb)
    by_runtime = {r: choose_runtime(c, r) for r in c.order}
    picks = [ch for ch in by_runtime.values() if ch.get("artifact")]
    answer = {"target": name, "by_runtime": by_runtime}
    if not picks:
        first = by_runtime[c.order[0]]
        return {**answer, **{k: v for k, v in first.items() if k != "runtime"}, "artifact": None, "overall": None,
                "separated": False, "overall_why": first["why"]}
    scored = [c.scored[p["artifact"]] for p in picks]
    fastest = c.fastest(scored)
    best = by_runtime[c.break_tie(fastest).runtime]
    others = [p for p in picks if p is not best]
    separated = not others or (len(fastest) == 1 and best["artifact"] in c.timed)  # one runtime: nothing to tie
    if not others:
        overall_why = f"{backends.runtime_name(best['runtime'])} is the only runtime with a file for {name}"
    elif separated:
        ahead = [(p, beats(c.timed[best["artifact"]], c.timed[p["artifact"]])[1]) for p in others]
        overall_why = "faster than " + ", ".join(f"{backends.runtime_name(p['runtime'])}'s `{p['artifact']}` "
                                                 f"({ratio_text(cmp)})" for p, cmp in ahead)
    elif best["artifact"] in c.timed:
        tied = [backends.runtime_name(a.runtime) for a in fastest if a.artifact != best["artifact"]]
        overall_why = (f"no single fastest runtime: ties within noise with {', '.join(tied)}, broken by "
                       f"{c.tie_rule()}; ship the file for the SDK your app links")
    else:
        overall_why = f"not timed on {name}: picked by {c.tie_rule()}"
    return {**answer, **best, "overall": best["runtime"], "separated": separated, "overall_why": overall_why}


def choose_records(name: str, target: dict, rows: list[dict], evaluation: dict, max_drop: float,
                   prefer: str = "accuracy", unshippable: dict[str, str] | None = None,
                   activation_mb: float | None = None) -> dict:
    """choose on report.json's records: the target's latency rows and the evaluation, as the stages wrote them."""
    return choose(name, target, [LatencyRow.from_dict(r) for r in rows], Evaluation.from_dict(evaluation),
                  max_drop, prefer, unshippable, activation_mb)


def unshippable_files(report: dict) -> dict[str, str]:
    """artifact -> why, for every file its quantizer marked ship: false or left over its accuracy budget."""
    records = ((report.get("stages") or {}).get("quantize") or {}).get("summary", {}).get("artifacts", {})
    found = {k: r.get("ship_note") or "its quantizer found it not faster than its float sibling on this host"
             for k, r in records.items() if r.get("ship") is False}
    for key, record in records.items():
        fallback = record.get("fallback") or {}
        if fallback and not fallback.get("met", True):
            drop = (fallback.get("steps") or [fallback])[-1].get("drop")
            found.setdefault(key, f"over the accuracy budget on validation images ({drop:.2f} points lost, "
                                  f"max_drop {fallback.get('max_drop')}) even with layers kept in float")
    return found


def choose_all(report: dict, activation_mb: float | None = None) -> dict[str, dict]:
    """target name -> its answer (choose), from report.json's latency and evaluation records."""
    latency, evaluation = report.get("latency") or {}, Evaluation.from_dict(report.get("evaluation") or {})
    max_drop = report["config"]["quantize"]["max_drop"]
    prefer = (report["config"].get("ship") or {}).get("prefer", "accuracy")
    unshippable = unshippable_files(report)
    rows = [LatencyRow.from_dict(r) for r in latency.get("rows", []) + latency.get("predicted", [])]
    return {name: choose(name, target, [r for r in rows if r.target == name], evaluation, max_drop, prefer,
                         unshippable, activation_mb)
            for name, target in (latency.get("targets") or {}).items()}
