"""`manifold-edge targets` (the profiles) and `manifold-edge bench MODEL --target NAME` (any model file
a user already has, profiled like the pipeline's benchmark stage does, outside a run)."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

import backends
from backends.base import Backend
from pipeline.config import PipelineConfig
from pipeline.core.errors import UserError, clip
from pipeline.core.fileio import unwritable
from pipeline.core.numerics import FP32, UNKNOWN, Numerics
from pipeline.documents import BenchDocument, TargetEntry, TargetsDocument
from pipeline.tables import Column, Table
from targets.latency import Model, add_diagnoses, describe_comparison, measure_target
from targets.profiles import BUILTIN_FILE, all_profiles, resolve


def targets_document(cfg: PipelineConfig) -> TargetsDocument:
    entries = []
    for name, p in all_profiles(cfg.targets).items():
        reach = {"local": "this host (proxy)", "ssh": f"ssh {p.user + '@' if p.user else ''}{p.host}",
                 "adb": f"adb {p.serial or ''}".strip(),
                 "predicted": f"not timed: predicted for {p.public_device} ({p.predicted_runtime})",
                 "arm64-emulated": f"not timed: emulated {p.cpu} (accuracy only)"}[p.connection]
        if p.runtime == "coreml":
            reach = f"a Mac, {p.compute_units}"
        entries.append(TargetEntry(name=name, device=p.device, runtime=p.runtime, runtimes=list(p.all_runtimes),
                                   precision=p.precision, threads=p.threads, latency_budget_ms=p.latency_budget_ms,
                                   memory_budget_mb=p.memory_budget_mb, connection=p.connection, reached_by=reach,
                                   source="pipeline.toml" if name in cfg.targets else "built-in",
                                   description=p.description or "(no description)"))
    return TargetsDocument(builtin_file=str(BUILTIN_FILE), targets=entries)


def targets_tables(doc: TargetsDocument) -> list[Table]:
    profiles = Table("target profiles (budgets: p90 ms at batch 1; MB the model adds)", [
        Column("name"), Column("device"), Column("runtimes"), Column("prefers"), Column("threads", numeric=True),
        Column("p90 ms", numeric=True), Column("MB", numeric=True), Column("reached by"), Column("from")])
    descriptions = Table("descriptions", [Column("name"), Column("description")])
    for t in doc.targets:
        profiles.rows.append([t.name, t.device, ", ".join(t.runtimes), t.precision, str(t.threads),
                              f"{t.latency_budget_ms:g}", f"{t.memory_budget_mb:g}", t.reached_by, t.source])
        descriptions.rows.append([t.name, t.description])
    return [profiles, descriptions]


def targets_notes(doc: TargetsDocument) -> list[str]:
    """Where the profiles come from and what the predicted targets can say (stderr: not part of the table)."""
    from targets.predict.predictor import available, table_jobs_by_compute_unit

    by_device: dict[str, set[str]] = {}
    for device, runtime, precision in available():
        by_device.setdefault(device, set()).add(f"{runtime} {precision}")
    jobs = table_jobs_by_compute_unit()
    return [f"built-in profiles: {doc.builtin_file}; add yours as [targets.NAME] in pipeline.toml",
            "public_device (predicted NPU latency, from Qualcomm AI Hub's public measurements): " + "; ".join(
                f"{d} ({', '.join(sorted(r))})" for d, r in sorted(by_device.items())),
            f"the public table for these devices and runtimes is {jobs['NPU']} NPU, {jobs['GPU']} GPU and "
            f"{jobs['CPU']} CPU jobs: predictions are NPU latency; no phone CPU latency can be predicted from it"]


def bench_predicted(fitting: list[Model], models: list[Model], name: str, profile) -> list[dict]:
    """A predicted target's rows for the given files, each at the precision its own numerics say (read from the
    file): features from the fp32 .onnx among them (the float graph the others are taken to be made from)."""
    from targets.predict.file_numerics import file_numerics
    from targets.predict.rows import predicted_rows

    read = {m.path: file_numerics(m.path) for m in models if m in fitting or m.path.suffix == ".onnx"}
    graph = next((m for m in models if m.path.suffix == ".onnx" and read[m.path] == FP32), None)
    if graph is None:
        raise UserError(f"--target {name} predicts latency from the fp32 ONNX graph's features: give the model's fp32 "
                        ".onnx too (its float export: quantized files are predicted from its features)")
    given = [Model(m.key, m.path, m.runtime, precision_label(read[m.path]), read[m.path])
             for m in fitting if m is not graph]
    return predicted_rows([Model(graph.key, graph.path, "onnxruntime", "fp32", FP32), *given], name, profile)


def precision_label(numerics: Numerics) -> str:
    """A readable precision for numerics read from a file: fp32, fp16, int8 static, int8 dynamic..."""
    if numerics.scheme in ("float", "unknown"):
        return numerics.weights
    return f"{numerics.weights} {numerics.scheme}"


def backends_by_suffix() -> dict[str, Backend]:
    return {suffix: backend for backend in backends.backends() for suffix in backend.suffixes}


def model_of(path: str) -> Model:
    file = Path(path)
    if not file.exists():
        raise UserError(f"{path}: no such model file")
    known = backends_by_suffix()
    if file.suffix not in known:
        raise UserError(f"{path}: not a model file this tool benchmarks; give one of "
                        + ", ".join(f"{suffix} ({b.runtime_title})" for suffix, b in known.items())
                        + " (an OpenVINO .xml with its .bin beside it)")
    return Model(file.name, file, known[file.suffix].runtime, "unknown", UNKNOWN)


def bench(cfg: PipelineConfig, paths: list[str], target_names: list[str], console: Console,
          json_path: str | None = None) -> BenchDocument:
    """Time (or predict) the files on the targets, a spinner on `console` meanwhile; `json_path`: checked
    before any timing, for the caller to write the document to."""
    models = [model_of(p) for p in paths]
    profiles = resolve(target_names, cfg.targets)
    if json_path:
        check_json_path(Path(json_path))
    rows, predicted = [], []
    for name, profile in profiles.items():
        fitting = [m for m in models if m.runtime in profile.all_runtimes]
        if not fitting:
            runtimes = sorted({m.runtime for m in models})
            others = [n for n, p in all_profiles(cfg.targets).items() if set(p.all_runtimes) & set(runtimes)]
            raise UserError(f"--target {name} runs {', '.join(profile.all_runtimes)}, but the model(s) need "
                            f"{', '.join(runtimes)}; targets that do: {', '.join(others)}")
        if profile.connection == "predicted":
            predicted += bench_predicted(fitting, models, name, profile)
            continue
        with console.status(f"{name}: {', '.join(m.key for m in fitting)}" +
                            (" (interleaved)" if len(fitting) > 1 else "")):
            timed = measure_target(fitting, name, profile, cfg.benchmark)
        for row in timed:
            if row.get("error_kind") == "bad_model":
                raise UserError(row["error"])
            if "profile" in row:  # a file given by path: what its kernels ran in
                int8 = bool(row["profile"]["share_by_precision"].get("int8"))
                row["precision"] = "int8" if int8 else "float"
                row["numerics"] = (Numerics("int8", "unknown", "unknown") if int8 else UNKNOWN).as_dict()
            rows.append(row)
    add_diagnoses(rows)
    return BenchDocument(rows=rows, predicted=predicted)


def check_json_path(path: Path) -> None:
    """`--json PATH` can be written, checked before minutes of timing."""
    shown = clip(str(path), 120)
    if path.is_dir():
        example = clip(str(path / "bench.json"), 140)
        raise UserError(f"--json {shown}: is a folder; give a file name, e.g. --json {example}")
    why = unwritable(path.parent)
    if why:
        raise UserError(f"--json {shown}: its folder {why}; give a path this user can write")


def bench_tables(doc: BenchDocument) -> list[Table]:
    """The latency table (timed rows) and the details table (each row's notes, and the predicted rows)."""
    from stages.benchmark import predicted_row_text

    latency = Table("batch-1 latency (proxy = this host standing in for the device)", [
        Column("target"), Column("model"), Column("label"),
        *[Column(c, numeric=True) for c in ("p50 ms", "95% interval", "CPU p50 ms", "p90 ms", "p99 ms", "img/s",
                                            "RSS MB")],
        Column("budget", styles={"ok": "green", "over": "red"})])
    details = Table("details", [Column("target"), Column("model"), Column("detail")])
    for r in doc.rows:
        if "latency_ms" not in r:
            short = "needs macOS" if r.get("error_kind") == "needs_macos" else "error (in details)"
            latency.rows.append([r["target"], r["artifact"], r["label"], *["-"] * 7, short])
        else:
            lat, tp, b = r["latency_ms"], r["throughput"], r["budget"]
            ci, cpu = lat.get("p50_interval"), r.get("cpu_ms", {}).get("p50")
            latency.rows.append([
                r["target"], r["artifact"], r["label"], f"{lat['p50']:.3f}", f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
                f"{cpu:.3f}" if cpu is not None else "-", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
                f"{tp['images_per_s']:.0f}" if tp.get("images_per_s") else "-", f"{r['model_rss_mb']:.0f}",
                "ok" if b["latency_ok"] and b["memory_ok"] else "over"])
        details.rows += [[r["target"], r["artifact"], text] for text in row_details(r)]
    for r in doc.predicted:
        details.rows.append([r["target"], r["artifact"], predicted_row_text(r).split(": ", 1)[1]])
    return [t for t in (latency, details) if t.rows]


def row_details(r: dict) -> list[str]:
    """A timed row's notes: its error or note, mean and spread, the per-layer split, the INT8 verdict."""
    lines = [r[key] for key in ("error", "note") if r.get(key)]
    if "latency_ms" in r:
        lat, b = r["latency_ms"], r["budget"]
        lines.append(f"mean {lat['mean']:.3f} ± {lat['std']:.3f} ms over {r['runs']} runs{timing_text(r)}, "
                     f"load {r['load_ms']:.0f} ms, {r['model_bytes'] / 1e6:.2f} MB on disk, "
                     f"budgets {b['latency_ms']:g} ms p90 / {b['memory_mb']:g} MB")
    if "profile" in r:
        ops = ", ".join(f"{e['op_type']} ({e['precision']}) {100 * e['share']:.0f}%"
                        for e in r["profile"]["by_op_type"][:6])
        lines.append(f"per-layer: {r['profile']['layers_ms']:.3f} ms in layers; {ops}")
    if "comparison" in r:
        lines.append(f"vs {r['comparison']['baseline']}: {describe_comparison(r['comparison']).replace('**', '')}")
    if "diagnosis" in r:
        lines.append(r["diagnosis"]["verdict"])
    return lines


def timing_text(r: dict) -> str:
    """How the timing ended and the host's load around it."""
    timing, load = r.get("timing") or {}, r.get("host_load") or {}
    parts = []
    if timing.get("interleaved_with"):
        parts.append(f"interleaved with {', '.join(timing['interleaved_with'])}")
    if timing.get("stopped"):
        parts.append(f"stopped at {timing['stopped'].replace('_', ' ')}")
    if load.get("before"):
        parts.append(f"1-min load {load['before'][0]:g} -> {load['after'][0]:g} on {load['cores']} cores")
    return f" ({'; '.join(parts)})" if parts else ""
