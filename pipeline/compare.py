"""`manifold-edge compare RUN_A RUN_B`: two runs side by side, from their report.json files: which stages each
completed, every config field that differs, accuracy with the difference's 95% interval, the shipped file per
target and runtime, and latency (timed and predicted rows) with B's speed relative to A's.

`compare()` returns one dict (schema SCHEMA, printed by `--json`); `render_markdown()` writes the table from it,
so both say the same."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.fileio import read_json, unwritable, write_text
from pipeline.core.intervals import difference_interval
from pipeline.graph import STAGES, flatten
from pipeline.ship import ratio_text
from targets.agent.host import sidecar
from targets.latency import compare_latency

SCHEMA = "manifold-edge/compare/1"


def load_report(run_dir: str) -> dict:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no report.json; give a run folder (runs/<name>) of a finished run")
    return read_json(path)


def compare(a_dir: str, b_dir: str) -> dict:
    """The comparison of run B against run A, as `--json` prints it."""
    a, b = load_report(a_dir), load_report(b_dir)
    return {"schema": SCHEMA, "a": _run(a_dir, a), "b": _run(b_dir, b), "config": _config(a, b),
            "accuracy": _accuracy(a, b), "shipped": _shipped(Path(a_dir), a, Path(b_dir), b),
            "latency": _latency(a, b)}


def _run(run_dir: str, report: dict) -> dict:
    done = [name for name in STAGES if name in report.get("stages", {})]
    missing = [what for stage, what in (("evaluate", "accuracy"), ("benchmark", "latency")) if stage not in done]
    missing += ["shipped files"] if missing else []  # the ship rule reads both
    return {"dir": run_dir, "name": report["run"]["name"], "config_hash": report["run"]["config_hash"],
            "wall_s": report["run"].get("wall_s"), "stages": done,
            "stopped_after": done[-1] if done and len(done) < len(STAGES) else None, "missing": missing}


def _digest(config: dict) -> str:
    """pipeline.config.PipelineConfig.digest() of a recorded config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _config(a: dict, b: dict) -> dict:
    """Every field that differs (run.name included: the hash covers it), which stages' cache keys differ, and
    why the hashes differ where no field does."""
    fa, fb = flatten(a["config"]), flatten(b["config"])
    changes = [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(fa.keys() | fb.keys())
               if fa.get(k) != fb.get(k)]
    ha, hb = a["run"]["config_hash"], b["run"]["config_hash"]
    note = None
    if ha != hb and not changes:
        off = [side for side, r in (("A", a), ("B", b)) if _digest(r["config"]) != r["run"]["config_hash"]]
        note = "the hashes differ but every field is equal" + (
            f": {' and '.join(off)} recorded a hash that its config does not give (written by another version of "
            "manifold-edge)" if off else "")
    sa, sb = a.get("stages", {}), b.get("stages", {})
    both = [name for name in STAGES if name in sa and name in sb]
    return {"hashes_equal": ha == hb, "changes": changes, "note": note,
            "same_key": [n for n in both if sa[n]["key"] == sb[n]["key"]],
            "other_key": [n for n in both if sa[n]["key"] != sb[n]["key"]]}


def _accuracy(a: dict, b: dict) -> dict | None:
    """Top-1 of the teacher, the student and every artifact; None unless both runs evaluated."""
    ea, eb = a.get("evaluation"), b.get("evaluation")
    if not ea or not eb:
        return None
    images = min(ea.get("images", 0), eb.get("images", 0))
    same = a["stages"]["evaluate"]["key"] == b["stages"]["evaluate"]["key"]  # one cached result: no noise
    top1_a = {role: (ea.get(role) or {}).get("top1") for role in ("teacher", "student")}
    top1_b = {role: (eb.get(role) or {}).get("top1") for role in ("teacher", "student")}
    top1_a.update({r["artifact"]: r.get("top1") for r in ea.get("artifacts", [])})
    top1_b.update({r["artifact"]: r.get("top1") for r in eb.get("artifacts", [])})
    rows = []
    for model in dict.fromkeys([*top1_a, *top1_b]):
        ta, tb = top1_a.get(model), top1_b.get(model)
        both = ta is not None and tb is not None
        rows.append({"model": model, "a": ta, "b": tb, "delta": round(tb - ta, 2) if both else None,
                     "interval": list(_difference(ta, tb, images)) if both and not same else None})
    return {"images": {"a": ea.get("images"), "b": eb.get("images")}, "same_artifact": same, "rows": rows}


def _difference(ta: float, tb: float, images: int) -> tuple[float, float]:
    """95% interval of tb - ta. The runs' per-image predictions are not recorded, so it allows the most
    disagreement the two top-1s allow (one right where the other is wrong): conservative on the same test
    images and on independent ones."""
    most = min((100 - ta) + (100 - tb), ta + tb, 100) / 100
    return difference_interval(tb, ta, 1 - most, images)


def _shipped(a_dir: Path, a: dict, b_dir: Path, b: dict) -> list[dict] | None:
    """Per target and runtime, the file each run ships and whether it changed; None unless both ship files."""
    sa, sb = a.get("ship"), b.get("ship")
    if not sa or not sb:
        return None
    rows = []
    for target in dict.fromkeys([*sa, *sb]):
        ra, rb = (sa.get(target) or {}).get("by_runtime", {}), (sb.get(target) or {}).get("by_runtime", {})
        for runtime in dict.fromkeys([*ra, *rb]):
            fa = _file(a_dir, a, ra[runtime]) if runtime in ra else None
            fb = _file(b_dir, b, rb[runtime]) if runtime in rb else None
            overall = [side for side, s in (("A", sa), ("B", sb)) if (s.get(target) or {}).get("runtime") == runtime]
            rows.append({"target": target, "runtime": runtime, "overall": overall, "a": fa, "b": fb,
                         "file": _verdict(fa, fb)})
    return rows


def _file(run_dir: Path, report: dict, choice: dict) -> dict:
    """A shipped artifact: its file name, bytes, and the sha256 of its file(s) from the cache's manifest (None
    where the cache is not found beside the run folder)."""
    for stage in ("export", "quantize"):
        entry = report["stages"].get(stage) or {}
        record = entry.get("summary", {}).get("artifacts", {}).get(choice["artifact"])
        if record:
            break
    names = [record["file"], sidecar(record["file"]), *([record["mobile"]["file"]] if record.get("mobile") else [])]
    return {"artifact": choice["artifact"], "file": record["file"], "bytes": choice.get("bytes"),
            "sha256": _cached_sha256(run_dir, Path(entry["artifact"]).name, names)}


def _cached_sha256(run_dir: Path, folder: str, names: list[str]) -> str | None:
    """One sha256 over the manifest hashes of an artifact's files (a .mlpackage folder's files, an IR's .bin,
    the .ort beside an ONNX file), from the artifact cache beside the run folder."""
    manifest = run_dir.parent / ".cache" / folder / "manifest.json"
    if not manifest.is_file():
        return None
    files = read_json(manifest).get("files", {})
    found = sorted(f"{n}:{m['sha256']}" for n, m in files.items()
                   if any(n == name or n.startswith(name + "/") for name in names))
    return hashlib.sha256("\n".join(found).encode()).hexdigest() if found else None


def _verdict(fa: dict | None, fb: dict | None) -> str:
    if fa is None or fb is None:
        return "only in A" if fb is None else "only in B"
    if (fa["artifact"], fa["file"], fa["bytes"]) != (fb["artifact"], fb["file"], fb["bytes"]):
        return "changed"
    if fa["sha256"] and fb["sha256"]:
        return "same file" if fa["sha256"] == fb["sha256"] else "changed"
    return "same name and size (no hash: the artifact cache is not beside the run folder)"


def _latency(a: dict, b: dict) -> list[dict] | None:
    """Timed and predicted rows of each target and artifact, B's speed relative to A's with its interval; None
    unless both runs were benchmarked."""
    if not a.get("latency") or not b.get("latency"):
        return None
    la, lb = _timed(a), _timed(b)
    rows = []
    for key in dict.fromkeys([*la, *lb]):
        ra, rb = la.get(key), lb.get(key)
        row = {"target": key[0], "artifact": key[1], "label": key[2], "a": _p50(ra), "b": _p50(rb),
               "speedup": None, "interval": None, "verdict": None, "text": "-"}
        if ra and rb:
            c = compare_latency(rb, ra)  # A's median over B's: above 1, B is faster
            if key[2] == "predicted":
                row.update(speedup=c["speedup"], text=f"{c['speedup']:.2f}x as fast (no interval: both are "
                                                      "predictions of one fitted model)")
            else:
                row.update(speedup=c["speedup"], interval=c["interval"], verdict=c["verdict"], text=ratio_text(c))
        rows.append(row)
    return rows


def _timed(report: dict) -> dict[tuple, dict]:
    latency = report.get("latency") or {}
    return {(r["target"], r.get("artifact"), r["label"]): r for r in [*latency.get("rows", []),
                                                                      *latency.get("predicted", [])]
            if r.get("latency_ms")}


def _p50(row: dict | None) -> dict | None:
    return None if row is None else {"p50": row["latency_ms"]["p50"],
                                     "p50_interval": row["latency_ms"].get("p50_interval")}


def render_markdown(result: dict) -> str:
    """The comparison as markdown, from `compare()`'s dict."""
    a, b = result["a"], result["b"]
    lines = [f"# {a['name']} vs {b['name']}", "", f"- A = {_describe(a)}", f"- B = {_describe(b)}", ""]
    lines += _config_lines(result["config"]) + _accuracy_lines(result) + _shipped_lines(result)
    return "\n".join(lines + _latency_lines(result))


def _describe(run: dict) -> str:
    wall = f"{run['wall_s']:.0f} s" if run["wall_s"] is not None else "wall time unknown"
    text = f"`{run['dir']}` (config `{run['config_hash'][:12]}`, {wall}): "
    if run["stopped_after"]:
        missing = run["missing"]
        return text + f"stopped after {run['stopped_after']}: no {', '.join(missing[:-1])} or {missing[-1]}"
    return text + ("every stage" if run["stages"] else "no stage")


def _config_lines(config: dict) -> list[str]:
    lines = ["## Config changes", ""]
    lines += [f"- `{c['key']}`: {c['a']!r} -> {c['b']!r}" for c in config["changes"]]
    if config["note"]:
        lines.append(f"- {config['note']}")
    elif not config["changes"]:
        lines.append("- none (the same config hash)")
    if config["same_key"]:
        lines.append(f"- same cache key (the same artifact): {', '.join(config['same_key'])}")
    if config["other_key"]:
        lines.append(f"- other cache key (built from other settings, code or inputs): "
                     f"{', '.join(config['other_key'])}")
    return lines + [""]


def _accuracy_lines(result: dict) -> list[str]:
    lines = ["## Accuracy (test top-1 %)", ""]
    accuracy = result["accuracy"]
    if accuracy is None:
        return lines + [f"- not compared: {_without(result, 'accuracy')}", ""]
    images = accuracy["images"]
    lines += [f"Test images: A {images['a']}, B {images['b']}. " + (
        "Both runs reused one evaluate artifact (the same cache key): the same predictions, no interval needed."
        if accuracy["same_artifact"] else "The 95% interval of B - A is conservative: the runs' per-image "
        "predictions are not recorded, so it allows the most disagreement the two top-1s allow."), "",
              "| model | A | B | B - A | 95% interval |", "|---|---:|---:|---:|---|"]
    for r in accuracy["rows"]:
        interval = f"{r['interval'][0]:+.2f} to {r['interval'][1]:+.2f}" if r["interval"] else \
            "same artifact" if accuracy["same_artifact"] else "-"
        delta = f"{r['delta']:+.2f}" if r["delta"] is not None else "-"
        lines.append(f"| `{r['model']}` | {_num(r['a'], 2)} | {_num(r['b'], 2)} | {delta} | {interval} |")
    return lines + [""]


def _shipped_lines(result: dict) -> list[str]:
    lines = ["## Shipped files (per target and runtime)", ""]
    if result["shipped"] is None:
        return lines + [f"- not compared: {_without(result, 'shipped files')}", ""]
    lines += ["| target | runtime | A | B | file |", "|---|---|---|---|---|"]
    for r in result["shipped"]:
        overall = f" (overall pick in {' and '.join(r['overall'])})" if r["overall"] else ""
        lines.append(f"| {r['target']} | {r['runtime']}{overall} | {_shipped_cell(r['a'])} | "
                     f"{_shipped_cell(r['b'])} | {r['file']} |")
    return lines + [""]


def _shipped_cell(f: dict | None) -> str:
    if f is None:
        return "-"
    digest = f", sha256 `{f['sha256'][:12]}`" if f["sha256"] else ""
    size = f", {f['bytes']:,} B" if f["bytes"] is not None else ""
    return f"`{f['artifact']}` ({f['file']}{size}{digest})"


def _latency_lines(result: dict) -> list[str]:
    lines = ["## Latency (p50 ms, batch 1)", ""]
    if result["latency"] is None:
        return lines + [f"- not compared: {_without(result, 'latency')}", ""]
    lines += ["Timed rows (proxy: this host; measured: the device) carry their median's 95% interval; predicted "
              "rows are predicted from public measurements, not timed.", "",
              "| target | artifact | label | A | B | B vs A |", "|---|---|---|---:|---:|---|"]
    for r in result["latency"]:
        pa, pb = (r["a"] or {}).get("p50"), (r["b"] or {}).get("p50")
        lines.append(f"| {r['target']} | `{r['artifact']}` | {r['label']} | {_num(pa, 3)} | {_num(pb, 3)} | "
                     f"{r['text']} |")
    return lines + [""]


def _without(result: dict, what: str) -> str:
    """Why a section is empty: the run(s) that stopped before it, or that neither run has it."""
    short = [f"{side} stopped after {run['stopped_after']}" for side, run in (("A", result["a"]), ("B", result["b"]))
             if what in run["missing"]]
    return "; ".join(short) if short else "neither run has any"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def out_files(out: str) -> list[Path]:
    """What `--out` writes: DIR/compare.md and DIR/compare.html; the old `--out FILE.md|FILE.html` writes that
    one file, with a deprecation warning."""
    path = Path(out)
    if path.suffix in (".md", ".html") and not path.is_dir():
        print(f"warning: --out {out}: a file is deprecated; --out takes a folder (it writes compare.md and "
              "compare.html in it)", file=sys.stderr)
        return [path]
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder (compare.md and compare.html are written in it)")
    why = unwritable(path)
    if why:
        raise UserError(f"--out {out}: {why}; give a writable folder")
    return [path / "compare.md", path / "compare.html"]


def write_comparison(text: str, paths: list[Path], title: str) -> None:
    """The markdown, or the self-contained HTML page of it, to each of `paths` (by suffix)."""
    from pipeline.report.html import render_html

    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, render_html(title, text, path.parent) if path.suffix == ".html" else text)
