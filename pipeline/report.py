"""report.json (every number, machine-readable) and report.md (what a person reads) for a run."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from pipeline.activations import activation_mb, fp32_onnx
from pipeline.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.fileio import read_json, write_json, write_text
from pipeline.core.lock import holder
from pipeline.deploy import write_deploy
from pipeline.graph import STAGES, Pipeline, RunRecord
from pipeline.report_arm64 import arm64_lines
from pipeline.ship import RUNTIME_NAMES, SAME_ACCURACY, choose_all
from targets.latency import describe_comparison
from targets.runtimes import NEEDS_MACOS

PACKAGES = ("manifold-edge", "torch", "timm", "numpy", "pydantic", "rich", "scikit-learn", "onnx", "onnxruntime",
            "onnxscript", "openvino", "nncf", "coremltools", "executorch", "torchao", "ai-edge-litert", "litert-torch",
            "ai-edge-quantizer")


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _curves(record: RunRecord | None) -> list[dict]:
    if record is None or not record.summary.get("metrics_file"):
        return []
    path = record.path / record.summary["metrics_file"]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stage_parts(records: list[RunRecord], by_name: dict[str, RunRecord]) -> dict:
    return {
        "stages": {r.name: {"key": r.key, "cached": r.cached, "wall_s": round(r.wall_s, 2),
                            "artifact": str(r.path), "summary": r.summary} for r in records},
        "evaluation": by_name["evaluate"].summary if "evaluate" in by_name else None,
        "latency": by_name["benchmark"].summary if "benchmark" in by_name else None,
        "curves": {"teacher": _curves(by_name.get("teacher")), "distill": _curves(by_name.get("distill"))},
    }


def build_report(cfg: PipelineConfig, records: list[RunRecord], run_dir: Path, wall_s: float,
                 device: str, deploy_to: Path | None = None) -> dict:
    by_name = {r.name: r for r in records}
    report = {
        "run": {"name": cfg.run.name, "seed": cfg.run.seed, "device": device, "config_hash": cfg.digest(),
                "git_commit": git_commit(), "versions": package_versions(), "wall_s": round(wall_s, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        **_stage_parts(records, by_name),
        "config": cfg.model_dump(mode="json"),
    }
    write_report(report, run_dir, deploy_to)
    return report


def write_report(report: dict, run_dir: Path, deploy_to: Path | None = None) -> None:
    """The ship choice per target and the deploy folder, report.json, the plots (plots/*.png), report.md and
    the self-contained report.html."""
    from pipeline.html import render_html

    ready = report.get("evaluation") and report.get("latency")
    report["ship"] = choose_all(report, activation_mb(fp32_onnx(report))) if ready else {}
    report["deploy"] = write_deploy(report, run_dir, deploy_to) if report["ship"] else {}
    plots = make_plots(report, run_dir)
    write_json(run_dir / "report.json", report)
    title = report["config"]["report"]["title"]
    markdown = render_markdown(title, report, plots)
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", render_html(title, markdown, run_dir))


RERUN = "rerun the same `manifold-edge run` command (the run's config; cached stages are reused)"


def check_run_folder(run_dir: Path) -> Path:
    """A finished run's folder (report.json and state.json in it), or a UserError that says what it is instead:
    no run at all, a run whose state.json is damaged or missing, a run in progress, or a run that did not finish
    (which stages did, and how to finish it)."""
    run_dir = Path(run_dir)
    has_report = (run_dir / "report.json").is_file()
    if not (run_dir / "state.json").is_file():
        if has_report:
            raise UserError(f"{run_dir / 'state.json'} is missing: {RERUN} to write it again")
        raise UserError(f"{run_dir}: not a run folder (no report.json / state.json); give runs/<name> of a "
                        "finished `manifold-edge run`")
    recorded = recorded_stages(run_dir)
    if not has_report:
        running = holder(run_dir / ".lock")  # the lock, not its file: a kill -9 leaves a free one behind
        if running:
            raise UserError(f"{run_dir}: a run is in progress ({running}); its report is written when it finishes")
        done = [name for name in STAGES if name in recorded] + sorted(recorded.keys() - STAGES.keys())
        raise UserError(f"{run_dir}: the run did not finish (no report.json; stages done: {', '.join(done) or 'none'})"
                        f": {RERUN} to finish it; a training stage resumes from its last epoch")
    return run_dir


def recorded_stages(run_dir: Path) -> dict:
    """A run folder's state.json ({stage: {key: ...}}), or a UserError naming it as damaged."""
    path = Path(run_dir) / "state.json"
    try:
        recorded = read_json(path)
    except (ValueError, OSError) as exc:  # truncated or edited JSON (UnicodeDecodeError is a ValueError)
        why = "not JSON" if isinstance(exc, ValueError) else type(exc).__name__
        raise UserError(f"{path} is damaged ({why}): {RERUN} to write it again") from None
    if not isinstance(recorded, dict) or not all(isinstance(e, dict) and isinstance(e.get("key"), str)
                                                 for e in recorded.values()):
        raise UserError(f"{path} is damaged (not a record of stages): {RERUN} to write it again")
    return recorded


def rebuild_report(run_dir: Path, deploy_to: Path | None = None) -> dict:
    """Rebuild a run's report from its artifacts (state.json + each stage's manifest), running nothing.
    Run-level facts (wall time, peak memory, device) are kept from the previous report.json; when that file
    cannot be read, the config comes from the run's config.json, those facts are unknown, and a warning says so."""
    run_dir = check_run_folder(run_dir)
    recorded = recorded_stages(run_dir)
    try:
        report = read_json(run_dir / "report.json")
        cfg = PipelineConfig.model_validate(report["config"])
    except (ValueError, KeyError, TypeError) as exc:
        report, cfg = _report_from_config(run_dir, exc)
    if not (Path(cfg.run.output_dir) / ".cache").is_dir():  # a relative output_dir read from elsewhere
        cfg.run.output_dir = str(run_dir.resolve().parent)  # the cache beside the run folder
    store = Pipeline(cfg).store
    records = []
    for name, entry in recorded.items():
        state, reason = store.check(name, entry["key"])
        if state != "cached":
            raise UserError(f"{run_dir}: the {name} artifact is {state} ({reason}); rerun `manifold-edge run` "
                            "to rebuild it")
        manifest = store.manifest(name, entry["key"])
        records.append(RunRecord(name, entry["key"], report.get("stages", {}).get(name, {}).get("cached", True),
                                 manifest.get("wall_s", 0.0), store.path(name, entry["key"]),
                                 manifest.get("summary", {})))
    by_name = {r.name: r for r in records}
    report.update(_stage_parts(records, by_name))
    report["run"]["rebuilt"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_report(report, run_dir, deploy_to)
    return report


def _report_from_config(run_dir: Path, damage: Exception) -> tuple[dict, PipelineConfig]:
    """A report skeleton for a run whose report.json cannot be read, from the config.json it started with."""
    try:
        cfg = PipelineConfig.model_validate(read_json(run_dir / "config.json"))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{run_dir}: report.json is damaged ({type(damage).__name__}) and config.json cannot be read "
                        f"({type(exc).__name__}): rerun `manifold-edge run` with the same config to rebuild them "
                        "(cached stages are reused)") from None
    print(f"warning: {run_dir / 'report.json'} is damaged ({type(damage).__name__}): rebuilt from the artifacts and "
          "config.json; the run's wall time, peak memory and device are not known", file=sys.stderr)
    run = {"name": cfg.run.name, "seed": cfg.run.seed, "device": "unknown", "config_hash": cfg.digest(),
           "git_commit": None, "versions": package_versions(), "wall_s": None, "peak_rss_mb": None, "finished": None}
    return {"run": run, "config": cfg.model_dump(mode="json")}, cfg


def make_plots(report: dict, run_dir: Path) -> dict[str, str]:
    """Draw every plot the data allows into run_dir/plots/; name -> path relative to run_dir."""
    from pipeline import plots

    folder = run_dir / "plots"
    made = {"curves": plots.training_curves(report["curves"], folder / "curves.png")}
    latency, evaluation = report.get("latency") or {}, report.get("evaluation") or {}
    top1 = {r["artifact"]: r["top1"] for r in evaluation.get("artifacts", []) if "top1" in r}
    floor = top1["torch_fp32"] - report["config"]["quantize"]["max_drop"] if "torch_fp32" in top1 else None
    for name, target in (latency.get("targets") or {}).items():
        rows = [r for r in latency["rows"] if r["target"] == name]
        chosen = (report.get("ship") or {}).get(name, {}).get("artifact")
        made[f"pareto:{name}"] = plots.pareto(name, rows, top1, target["latency_budget_ms"], floor,
                                              folder / f"pareto_{name}.png", chosen)
        made[f"layers:{name}"] = plots.layer_bars(name, rows, folder / f"layers_{name}.png")
    made = {k: str(v.relative_to(run_dir)) for k, v in made.items() if v is not None}
    for stale in folder.glob("*.png") if folder.is_dir() else []:
        if str(stale.relative_to(run_dir)) not in made.values():
            stale.unlink()
    return made


def _artifact_lines(rows: list[dict], quantize: dict | None) -> list[str]:
    if not rows:
        return []
    lines = ["## Student artifacts, each run in its own runtime on the test split", "",
             "| artifact | runtime | precision | evaluated | top-1 % | Δ vs torch fp32 | agreement with fp32 "
             "| size MB | INT8 ops / compressed weights |", "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in (r.get("op_types") or {}).items()) or "-"
        scores = (f"{r['top1']:.2f} | {r['delta_top1']:+.2f} | {100 * r['agreement']:.2f}%" if "top1" in r
                  else "- | - | -")
        lines.append(f"| `{r['artifact']}` | {r['runtime']} | {r['precision']} | {r['evaluation']} | {scores} | "
                     f"{r['bytes'] / 1e6:.2f} | {ops} |")
    lines.append("")
    for r in rows:
        if "reason" in r:
            lines += [f"Not simulated: {r['reason']}.", ""]
    if any(r["evaluation"] == "simulated" for r in rows):
        lines += [f"Simulated rows: {NEEDS_MACOS}. They reflect the package's program, compressed weights and "
                  "fp16 tensors, not Core ML's kernels or the Neural Engine; on-device numbers need a Mac.", ""]
    for note in (quantize or {}).get("notes", []):
        lines += [f"Note: {note}.", ""]
    hurt = [r for r in rows if r.get("worst_classes")]
    if hurt:
        lines += ["Classes compression hurts most (top-1 % on the class, fp32 -> compressed):", ""]
        for r in hurt:
            worst = "; ".join(f"{c['class']} {c['fp32']:.1f} -> {c['int8']:.1f} ({c['delta']:+.1f})"
                              for c in r["worst_classes"])
            lines.append(f"- `{r['artifact']}`: {worst}")
        lines.append("")
    for key, artifact in ((quantize or {}).get("artifacts") or {}).items():
        fb = artifact.get("fallback")
        if not fb:
            continue
        if "steps" in fb:
            first, last = fb["steps"][0]["drop"], fb["steps"][-1]["drop"]
            text = (f"drop {first:.2f} points on {len(fb['steps'])} step(s) -> {last:.2f}; layers kept in float: "
                    f"{', '.join(fb['excluded']) or 'none'}")
        else:
            text = (f"drop {fb['plain_drop']:.2f} points" + (f", NNCF accuracy control -> {fb['drop']:.2f}"
                                                               if fb["accuracy_control"] else ""))
        verdict = "within" if fb["met"] else "**over**"
        lines.append(f"- `{key}` on validation images: {text} ({verdict} max_drop {fb['max_drop']}).")
    lines.append("")
    return lines


def mobile_lines(report: dict) -> list[str]:
    """ONNX Runtime Mobile: each .ort file and how much of its graph the phones' execution providers would take."""
    records = [(key, a["mobile"]) for stage in ("export", "quantize")
               for key, a in ((report["stages"].get(stage) or {}).get("summary", {}).get("artifacts") or {}).items()
               if a.get("mobile")]
    if not records:
        return []
    eps = list(records[0][1]["execution_providers"])
    lines = ["## ONNX Runtime Mobile (.ort)", "",
             "ORT's own usability check of each ONNX graph for the phone execution providers, with the input shape "
             "fixed to batch 1 as an app would (nodes the provider takes / all nodes, in how many partitions; "
             "YES / MAYBE / NO is ORT's verdict on whether it beats the CPU provider).", "",
             "| artifact | .ort file | MB | .ort parity (vs torch; INT8: vs its .onnx) | " + " | ".join(eps) + " |",
             "|---|---|---:|---|" + "---|" * len(eps)]
    for key, m in records:
        parity = m.get("parity") or {}
        check = (f"max diff {parity['max_abs_diff']:.1e}, agreement {100 * parity['argmax_agreement']:.1f}%"
                 if parity else "-")
        cells = []
        for ep in eps:
            fixed = m["execution_providers"][ep]["fixed_shapes"]
            cells.append(f"{fixed['supported_nodes']}/{fixed['nodes']} in {fixed['partitions']}: "
                         f"{fixed['suitability']}")
        lines.append(f"| `{key}` | `{m['file']}` | {m['bytes'] / 1e6:.2f} | {check} | " + " | ".join(cells) + " |")
    ops = sorted({op for _, m in records for ep in eps for op in m["execution_providers"][ep]["fixed_shapes"]
                  ["unsupported_ops"]})
    if ops:
        lines += ["", f"Ops a provider lacks (they run on the CPU, splitting the graph): {', '.join(ops)}."]
    return lines + [""]


def _number(value: float | None, unit: str) -> str:
    return "unknown" if value is None else f"{value:.0f} {unit}"


def render_markdown(title: str, report: dict, plots: dict[str, str] | None = None) -> str:
    from pipeline.plots import NOT_TERMS

    run = report["run"]
    lines = [f"# {title}", "",
             f"Run `{run['name']}`, seed {run['seed']}, device {run['device']}, config `{run['config_hash'][:12]}`, "
             f"commit `{(run['git_commit'] or 'unknown')[:12]}`, wall time {_number(run['wall_s'], 's')}, "
             f"peak memory {_number(run['peak_rss_mb'], 'MB')}.", ""]
    lines += ship_lines(report)
    data_notes = report["stages"].get("data", {}).get("summary", {}).get("notes", [])
    if data_notes:
        lines += ["## Data", "", *[f"- Note: {note}." for note in data_notes], ""]
    evaluation = report["evaluation"]
    if evaluation:
        lines += [f"## Accuracy on the held-out {evaluation['split']} split ({evaluation['images']} images)", "",
                  "| role | model | params | MFLOPs/image | top-1 % | top-5 % | checkpoint MB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for role in ("teacher", "student"):
            r = evaluation[role]
            lines.append(f"| {role} | `{r['model']}` | {r['params']:,} | {r['flops'] / 1e6:.1f} | {r['top1']:.2f} "
                         f"| {r['top5']:.2f} | {r['checkpoint_bytes'] / 1e6:.2f} |")
        lines.append("")
        lines += _artifact_lines(evaluation.get("artifacts", []), report["stages"].get("quantize", {}).get("summary"))
        lines += mobile_lines(report)
        lines += arm64_lines(evaluation.get("arm64"))
    plots = plots or {}
    if report.get("latency"):
        lines += latency_lines(report["latency"], evaluation, plots)
        lines += predicted_lines(report["latency"])
    distill = report["stages"].get("distill", {}).get("summary")
    if distill:
        cfg = report["config"]["distill"]
        parts = [f"KD `{distill['kd']}`"]
        if distill["manifold"]:
            parts.append(f"manifold loss on student blocks {distill['student_layers']} <- teacher blocks "
                         f"{distill['teacher_layers']} (w_intra {cfg['w_intra']}, w_inter {cfg['w_inter']}, "
                         f"w_random {cfg['w_random']}, K {cfg['k']}, beta {cfg['beta']})")
        lines += ["## Distillation", "", "; ".join(parts) + ".", ""]
    for role, rows in report["curves"].items():
        if not rows:
            continue
        terms = [k for k in rows[0] if k not in NOT_TERMS]
        gpu = "gpu_memory_gb" in rows[0]
        processes = f" ({rows[-1]['processes']} processes)" if rows[-1].get("processes", 1) > 1 else ""
        lines += [f"### {role} training{processes}", "",
                  "| epoch | " + " | ".join(terms) + " | val top-1 % | img/s |" + (" GPU GB |" if gpu else ""),
                  "|---:|" + "---:|" * (len(terms) + 2 + gpu)]
        for row in rows:
            lines.append(f"| {row['epoch']} | " + " | ".join(f"{row[t]:.4f}" for t in terms)
                         + f" | {row['val_top1']:.2f} | {row['images_per_s']:.0f} |"
                         + (f" {row.get('gpu_memory_gb', 0):.2f} |" if gpu else ""))
        lines.append("")
    if "curves" in plots:
        lines += [f"![Training curves: each loss term and validation top-1 per epoch]({plots['curves']})", ""]
    lines += ["## Stages", "", "| stage | result | wall s | artifact |", "|---|---|---:|---|"]
    for name, stage in report["stages"].items():
        lines.append(f"| {name} | {'reused (cached)' if stage['cached'] else 'ran'} | {stage['wall_s']:.1f} "
                     f"| `{Path(stage['artifact']).name}` |")
    versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v)
    lines += ["", f"Versions: {versions}.", ""]
    return "\n".join(lines)


def _speed(c: dict) -> str:
    """`p50 0.097 ms [0.094-0.100], p90 0.120 (proxy)`, or the label where nothing was timed."""
    lat = c.get("latency_ms")
    if not lat:
        memory = f", memory est. {c['memory_mb_estimate']:.1f} MB" if "memory_mb_estimate" in c else ""
        return f"{c['label']}{memory}"
    ci = lat.get("p50_interval")
    shown = f"p50 {lat['p50']:.3f} ms" + (f" [{ci[0]:.3f}-{ci[1]:.3f}]" if ci else "")
    return f"{shown}, p90 {lat['p90']:.3f} ({c['label']})"


def ship_summary(report: dict) -> list[str]:
    """The console's last lines: where the deploy folder is, each target's overall pick and its answer per SDK."""
    if not report.get("deploy"):
        return []
    folder = Path(next(iter(report["deploy"].values()))).parent
    lines = [f"deploy: {folder}/<target>/<runtime>/ (model, labels.txt, preprocess.json, MODEL_CARD.md); "
             "take the runtime your app links"]
    for name, answer in report["ship"].items():
        if not answer.get("artifact"):
            lines.append(f"  {name}: nothing ships ({answer['overall_why']})")
            continue
        tie = "" if answer["separated"] else " (a tie within noise, broken by the stated order)"
        lines.append(f"  {name}: overall {answer['runtime']}/{answer['artifact']}{tie}")
        for runtime, c in answer["by_runtime"].items():
            shown = (f"{c['artifact']} ({c['precision']}, top-1 {c['top1']:.2f}%, {_speed(c)})" if c.get("artifact")
                     else f"nothing ships ({c['why']})")
            lines.append(f"    app links {RUNTIME_NAMES[runtime]}: {shown}")
    return lines


def ship_matrix(ship: dict) -> list[str]:
    """Targets x SDKs: the file each SDK's app ships, the overall pick in bold (a table that fits a screen)."""
    runtimes = [r for r in RUNTIME_NAMES if any(r in a["by_runtime"] for a in ship.values())]
    lines = ["| target | " + " | ".join(f"app links {RUNTIME_NAMES[r]}" for r in runtimes) + " |",
             "|---|" + "---|" * len(runtimes)]
    for name, answer in ship.items():
        cells = []
        for runtime in runtimes:
            c = answer["by_runtime"].get(runtime)
            if c is None:
                cells.append("")
                continue
            shown = f"`{c['artifact']}`" if c.get("artifact") else "nothing ships"
            if answer.get("overall") == runtime:
                shown = f"**{shown}**" + ("" if answer["separated"] else " *(tie)*")
            cells.append(shown)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ship_lines(report: dict) -> list[str]:
    """The first screen: per target, the overall pick and the file to ship for each SDK an app may link (under
    deploy/<target>/<runtime>/), its accuracy and speed, and why."""
    ship = report.get("ship") or {}
    if not ship:
        return []
    prefer = (report["config"].get("ship") or {}).get("prefer", "accuracy")
    lines = ["## Ship", "", "Your app links one SDK: its column is your answer (`deploy/<target>/<runtime>/`); "
             "**bold** is the overall pick, *(tie)* where no runtime is faster than the others beyond noise.", "",
             *ship_matrix(ship), "",
             "Per target and per SDK (runtime) an app on it may link, by one rule (pipeline/ship.py): "
             "within quantize.max_drop top-1 points of the fp32 student and the target's budgets, the fastest: a "
             "file is faster only when the medians' 95% intervals do not overlap and its median is at least 5% "
             f"lower, otherwise the files tie and the tie goes by ship.prefer = \"{prefer}\" "
             f"(accuracy: no real top-1 loss and within {SAME_ACCURACY:g} points of the most accurate, then the "
             "smaller file; "
             "size: the smaller file first), then "
             "the profile's runtime order. Each folder holds the model, labels.txt, preprocess.json and "
             "MODEL_CARD.md.", "",
             "| target | app links | ship | precision | top-1 % (Δ vs fp32, 95% interval) | latency ms | size MB "
             "| why |",
             "|---|---|---|---|---|---|---:|---|"]
    for name, answer in ship.items():
        if not answer.get("artifact"):
            lines.append(f"| {name} | - | nothing ships | - | - | - | - | {answer['overall_why']} |")
        for runtime, c in answer["by_runtime"].items():
            if not c.get("artifact"):
                lines.append(f"| {name} | {RUNTIME_NAMES[runtime]} | nothing ships | - | - | - | - | {c['why']} |")
                continue
            lo, hi = c["delta_interval"]
            noise = ", equal within noise" if c["within_noise"] else ""
            overall = ""
            if answer.get("overall") == runtime:
                overall = "**overall** " + ("" if answer["separated"] else "(tie) ")
            why = c["why"] + (f"; overall: {answer['overall_why']}" if answer.get("overall") == runtime else "")
            lines.append(f"| {name} | {RUNTIME_NAMES[runtime]} | {overall}`deploy/{name}/{runtime}/` "
                         f"`{c['artifact']}` | {c['precision']} | {c['top1']:.2f} ({c['delta_top1']:+.2f}, "
                         f"{lo:+.2f} to {hi:+.2f}{noise}; {c['evaluation']}) | {_speed(c)} | {c['bytes'] / 1e6:.2f} "
                         f"| {why} |")
    return [*lines, ""]


LABELS = {"measured": "measured on the device", "proxy": "this host standing in for the device, with the "
          "profile's threads: a proxy, not the device's speed", "needs-device": "not timed: the device or OS "
          "it needs is not here", "error": "the benchmark failed"}


def latency_lines(latency: dict, evaluation: dict | None, plots: dict[str, str]) -> list[str]:
    """The latency table (artifact x target), budgets, per-layer tops and INT8 diagnoses."""
    rows = latency["rows"]
    if not rows:
        return []
    top1 = {r["artifact"]: r["top1"] for r in (evaluation or {}).get("artifacts", []) if "top1" in r}
    lines = ["## Latency per target (batch 1)", "",
             "| target | artifact | precision | label | p50 ms (95% interval) | CPU p50 ms | p90 ms | p99 ms | runs "
             "| img/s (batch) | model RSS MB | top-1 % | budget (p90 ms / MB) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = f"{top1[r['artifact']]:.2f}" if r["artifact"] in top1 else "-"
        if "latency_ms" not in r:
            short = "needs macOS" if r.get("error_kind") == "needs_macos" else "not timed (below)"
            lines.append(f"| {r['target']} | `{r['artifact']}` | {r['precision']} | {r['label']} | - | - | - | - | - "
                         f"| - | - | {acc} | {short} |")
            continue
        lat, tp, b = r["latency_ms"], r["throughput"], r["budget"]
        ips = f"{tp['images_per_s']:.0f} ({tp['batch']})" if tp.get("images_per_s") else "-"
        verdict = "pass" if b["latency_ok"] and b["memory_ok"] else "**fail**"
        ci = lat.get("p50_interval")
        p50 = f"{lat['p50']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{lat['p50']:.3f} (no interval)"
        cpu = f"{r['cpu_ms']['p50']:.3f}" if "cpu_ms" in r else "-"
        label = f"{r['label']}: {r['kernels']}" if r.get("kernels") else r["label"]
        lines.append(f"| {r['target']} | `{r['artifact']}` | {r['precision']} | {label} | {p50} | {cpu} "
                     f"| {lat['p90']:.3f} | {lat['p99']:.3f} | {r.get('runs', '-')} | {ips} | {r['model_rss_mb']:.0f} "
                     f"| {acc} | {verdict} ({b['latency_ms']:g} / {b['memory_mb']:g}) |")
    lines.append("")
    lines += timing_lines(rows)
    labels = sorted({r["label"] for r in rows})
    lines += [f"Labels: {'; '.join(f'*{label}* = {LABELS[label]}' for label in labels)}.", ""]
    for note in dict.fromkeys(r[k] for r in rows for k in ("note", "error") if r.get(k)):
        lines += [f"- {note}"]
    for name, runtime in latency.get("no_artifact", {}).items():
        lines.append(f"- **{name}**: no {runtime} artifact in this run (enable its export).")
    lines.append("")
    pareto = [(name, plots[f"pareto:{name}"]) for name in latency["targets"] if f"pareto:{name}" in plots]
    if pareto:
        lines += ["### Accuracy vs latency per target", ""]
        lines += [f"![{name}: test top-1 vs p90 latency, Pareto front and budgets]({path})" for name, path in pareto]
        lines.append("")
    profiled = [r for r in rows if "profile" in r]
    if profiled:
        lines += ["### Where the time goes (per-layer profile, share of the layers' time)", ""]
        for r in profiled:
            p = r["profile"]
            ops = ", ".join(f"{e['op_type']}{' (int8)' if e['precision'] == 'int8' else ''} {100 * e['share']:.0f}%"
                            for e in p["by_op_type"][:5])
            over = p["layers_ms"] > r["latency_ms"]["p50"]
            timing = (f"{p['layers_ms']:.3f} ms in layers, more than the p50 of {r['latency_ms']['p50']:.3f} ms: the "
                      "profiler's own overhead; read the shares, not the ms" if over
                      else f"{p['layers_ms']:.3f} ms in layers")
            lines.append(f"- {r['target']} / `{r['artifact']}` ({timing}): {ops}")
        lines.append("")
        bars = [(name, plots[f"layers:{name}"]) for name in latency["targets"] if f"layers:{name}" in plots]
        lines += [f"![{name}: time per op type, int8 / float / conversion]({path})" for name, path in bars]
        lines.append("")
    compared = [r for r in rows if "comparison" in r]
    if compared:
        lines += ["### Compressed vs float on the same target", "",
                  "Faster or slower only when the interval of the speed-up (from the two medians' 95% intervals) "
                  "excludes 1; otherwise equal within noise.", ""]
        lines += [f"- {r['target']} / `{r['artifact']}` vs `{r['comparison']['baseline']}`: "
                  f"{describe_comparison(r['comparison'])}" for r in compared]
        lines.append("")
    diagnosed = [r for r in rows if "diagnosis" in r]
    if diagnosed:
        lines += ["### Why is INT8 (not) faster?", ""]
        lines += [f"- {r['target']} / `{r['artifact']}` vs `{r['diagnosis']['baseline']}`: "
                  + (f"{r['comparison']['verdict']}; " if "comparison" in r else "") + r["diagnosis"]["verdict"]
                  for r in diagnosed]
        lines.append("")
    return lines


def predicted_lines(latency: dict) -> list[str]:
    """Targets naming a public device: the predicted latency of each artifact with its interval and the
    error behind it, the measured row beside it when the device was attached, the 3 nearest public models
    as they measured, and the public models' device-vs-torch top-1 drop as context."""
    rows = latency.get("predicted") or []
    if not rows:
        return []
    measured = {(r["target"], r["artifact"]): r for r in latency["rows"] if r.get("label") == "measured"}
    lines = ["## Predicted latency on named devices (from public measurements, not timed here)", "",
             "Predicted from Qualcomm AI Hub's published on-device times of public models (qai-hub-models "
             "0.65.0), fitted on this model's ONNX graph features. The error shown is the one for this model: its "
             "own family's with one public model held out when the table has the family, else a whole new "
             "family's; beside it, the error of fitting the device from its sibling (docs/targets.md, "
             "\"Predicted latency\"). p90 is the interval's upper end: the public table has one time per model.", "",
             "| target | artifact | device / runtime / precision | predicted ms (interval) | measured p50 ms "
             "| held-out median / p90 error (basis) | sibling device's error | nearest public models, measured ms |",
             "|---|---|---|---:|---:|---|---|---|"]
    notes = []
    for r in rows:
        if "predicted" not in r:
            lines.append(f"| {r['target']} | `{r['artifact'] or '-'}` | {r['public_device']} / {r['public_runtime']} "
                         f"| - | - | - | - | {r['error']} |")
            continue
        p = r["predicted"]
        lo, hi = p["interval_ms"]
        seen = measured.get((r["target"], r["artifact"]))
        seen_ms = f"{seen['latency_ms']['p50']:.3f}" if seen else "-"
        near = ", ".join(f"{n['model']} {n['measured_ms']:.3g}" for n in p["nearest"])
        e = p["held_out_error"]
        sibling = (f"{e['sibling_device']}: {e['sibling_device_median_ape']:.0%} / {e['sibling_device_p90_ape']:.0%}"
                   if e.get("sibling_device") and e.get("sibling_device_p90_ape") is not None
                   else "no sibling in the table")
        lines.append(f"| {r['target']} | `{r['artifact']}` | {p['device']} / {p['runtime']} / {p['precision']} "
                     f"| {p['p50_ms']:.3f} ({lo:.3f}-{hi:.3f}, {p['level']:.0%}) | {seen_ms} "
                     f"| {e['median_ape']:.0%} / {e['p90_ape']:.0%} ({e['basis']}: {e['family']}, {e['models']} "
                     f"models) | {sibling} | {near} |")
        notes += [f"{r['target']}: {w}" for w in p["widened"]]
        if r.get("public_coverage"):
            notes.append(f"{r['target']}: {r['public_coverage']['note']}")
        ctx = r.get("accuracy_context")
        if ctx:
            notes.append(f"{p['runtime']} {p['precision']} on device vs torch, public models (context, not this "
                         f"model's accuracy): median top-1 drop {ctx['median_drop']:.2f} points, range "
                         f"{ctx['range'][0]:.2f} to {ctx['range'][1]:.2f}, {ctx['models']} models")
    lines.append("")
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    return [*lines, ""]


def timing_lines(rows: list[dict]) -> list[str]:
    """How each target was timed: interleaved or not, why timing stopped, the host's load around it, and a
    warning where the threads exceed the free cores."""
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        timed = [r for r in rows if r["target"] == target and "timing" in r]
        if not timed:
            continue
        t, load = timed[0]["timing"], timed[0].get("host_load") or {}
        how = (f"{len(timed)} artifacts timed interleaved ({t['block']} runs each per turn)" if len(timed) > 1
               and t.get("interleaved_with") else f"{len(timed)} artifact(s) timed")
        stops = sorted({r["timing"]["stopped"].replace("_", " ") for r in timed})
        text = (f"- {target}: {how}, {min(r['runs'] for r in timed)}-{max(r['runs'] for r in timed)} runs each, "
                f"stopped at {' / '.join(stops)} (goal: every median's 95% interval within "
                f"+-{100 * t['rel_interval']:g}%)")
        if load.get("before"):
            text += (f"; 1-minute load {load['before'][0]:g} before, {load['after'][0]:g} after, on "
                     f"{load['cores']} cores")
            if load.get("oversubscribed"):
                text += (f"; **warning**: {load['threads']} thread(s) but {load['free_cores']:g} cores free, "
                         "the timings share the CPU with other work")
        widths = {r["artifact"]: r["latency_ms"].get("half_width") for r in timed}
        wide = [f"`{a}` ({'no interval' if w is None else f'+-{100 * w:.1f}%'})" for a, w in widths.items()
                if w is None or w > t["rel_interval"]]
        if wide:
            text += f"; intervals wider than the goal: {', '.join(wide)}"
        lines.append(text + ".")
    return [*lines, ""] if lines else []
