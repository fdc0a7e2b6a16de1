"""`manifold-edge compare RUN_A RUN_B`: two runs side by side, from their report.json files: what changed
in the config, accuracy of the teacher, student and every artifact, latency per target and artifact."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.fileio import read_json
from pipeline.graph import flatten


def load_report(run_dir: str) -> dict:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no report.json; give a run folder (runs/<name>) of a finished run")
    return read_json(path)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(a: float | None, b: float | None, digits: int = 2) -> str:
    return "-" if a is None or b is None else f"{b - a:+.{digits}f}"


def compare_markdown(a_dir: str, b_dir: str) -> str:
    a, b = load_report(a_dir), load_report(b_dir)
    lines = [f"# {a['run']['name']} vs {b['run']['name']}", "",
             f"A = `{a_dir}` (config `{a['run']['config_hash'][:12]}`, {a['run']['wall_s'] or 0:.0f} s), "
             f"B = `{b_dir}` (config `{b['run']['config_hash'][:12]}`, {b['run']['wall_s'] or 0:.0f} s).", ""]
    fa, fb = flatten(a["config"]), flatten(b["config"])
    changed = [k for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k) and k != "run.name"]
    lines += ["## Config changes", ""]
    lines += ([f"- `{k}`: {fa.get(k)!r} -> {fb.get(k)!r}" for k in changed] or ["- none (same settings)"]) + [""]
    ea, eb = a.get("evaluation") or {}, b.get("evaluation") or {}
    lines += ["## Accuracy (test top-1 %)", "", "| model | A | B | B - A |", "|---|---:|---:|---:|"]
    for role in ("teacher", "student"):
        ta, tb = (ea.get(role) or {}).get("top1"), (eb.get(role) or {}).get("top1")
        lines.append(f"| {role} | {_num(ta)} | {_num(tb)} | {_delta(ta, tb)} |")
    arts_a = {r["artifact"]: r for r in ea.get("artifacts", [])}
    arts_b = {r["artifact"]: r for r in eb.get("artifacts", [])}
    for key in dict.fromkeys([*arts_a, *arts_b]):
        ta, tb = arts_a.get(key, {}).get("top1"), arts_b.get(key, {}).get("top1")
        lines.append(f"| `{key}` | {_num(ta)} | {_num(tb)} | {_delta(ta, tb)} |")
    lines.append("")
    la = {(r["target"], r["artifact"]): r for r in (a.get("latency") or {}).get("rows", []) if "latency_ms" in r}
    lb = {(r["target"], r["artifact"]): r for r in (b.get("latency") or {}).get("rows", []) if "latency_ms" in r}
    if la or lb:
        lines += ["## Latency (p50 ms, batch 1)", "", "| target | artifact | label | A | B | B / A |",
                  "|---|---|---|---:|---:|---:|"]
        for key in dict.fromkeys([*la, *lb]):
            pa = la[key]["latency_ms"]["p50"] if key in la else None
            pb = lb[key]["latency_ms"]["p50"] if key in lb else None
            ratio = f"{pb / pa:.2f}x" if pa and pb else "-"
            label = (la.get(key) or lb.get(key))["label"]
            lines.append(f"| {key[0]} | `{key[1]}` | {label} | {_num(pa, 3)} | {_num(pb, 3)} | {ratio} |")
        lines.append("")
    return "\n".join(lines)
