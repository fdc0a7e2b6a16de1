"""`manifold-edge targets` (the profiles) and `manifold-edge bench MODEL --target NAME` (any model file
a user already has, profiled like the pipeline's benchmark stage does, outside a run)."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import backends
from pipeline.config import PipelineConfig
from pipeline.core.errors import UserError, clip
from pipeline.core.fileio import unwritable, write_json
from pipeline.core.numerics import FP32, UNKNOWN, Numerics
from targets.latency import Model, add_diagnoses, describe_comparison, measure_target
from targets.profiles import BUILTIN_FILE, all_profiles, resolve


def list_targets(cfg: PipelineConfig, console: Console) -> None:
    table = Table(title="target profiles (budgets: p90 ms at batch 1; MB the model adds)")
    for column in ("name", "device", "runtimes", "prefers", "threads", "p90 ms", "MB", "reached by", "from"):
        table.add_column(column, justify="right" if column in ("threads", "p90 ms", "MB") else "left",
                         no_wrap=column == "name")
    profiles = all_profiles(cfg.targets)
    for name, p in profiles.items():
        reach = {"local": "this host (proxy)", "ssh": f"ssh {p.user + '@' if p.user else ''}{p.host}",
                 "adb": f"adb {p.serial or ''}".strip(),
                 "predicted": f"not timed: predicted for {p.public_device} ({p.predicted_runtime})",
                 "arm64-emulated": f"not timed: emulated {p.cpu} (accuracy only)"}[p.connection]
        if p.runtime == "coreml":
            reach = f"a Mac, {p.compute_units}"
        table.add_row(name, p.device, ", ".join(p.all_runtimes), p.precision, str(p.threads),
                      f"{p.latency_budget_ms:g}", f"{p.memory_budget_mb:g}", reach,
                      "pipeline.toml" if name in cfg.targets else "built-in")
    console.print(table)
    for name, p in profiles.items():
        console.print(f"[bold]{name}[/]: {escape(p.description or '(no description)')}")
    console.print(escape(f"built-in profiles: {BUILTIN_FILE}; add yours as [targets.NAME] in pipeline.toml"))
    from targets.predict.predictor import available, table_jobs_by_compute_unit

    by_device: dict[str, set[str]] = {}
    for device, runtime, precision in available():
        by_device.setdefault(device, set()).add(f"{runtime} {precision}")
    console.print("public_device (predicted NPU latency, from Qualcomm AI Hub's public measurements): " + "; ".join(
        escape(f"{d} ({', '.join(sorted(r))})") for d, r in sorted(by_device.items())))
    jobs = table_jobs_by_compute_unit()
    console.print(f"the public table for these devices and runtimes is {jobs['NPU']} NPU, {jobs['GPU']} GPU and "
                  f"{jobs['CPU']} CPU jobs: predictions are NPU latency; no phone CPU latency can be predicted from it")


def bench_predicted(fitting: list[Model], models: list[Model], name: str, profile, console: Console) -> list[dict]:
    """A predicted target's rows for the given files, each at the precision its own numerics say (read from the
    file): features from the fp32 .onnx among them (the float graph the others are taken to be made from)."""
    from stages.benchmark import predicted_row_text
    from targets.predict.file_numerics import file_numerics
    from targets.predict.rows import predicted_rows

    read = {m.path: file_numerics(m.path) for m in models if m in fitting or m.path.suffix == ".onnx"}
    graph = next((m for m in models if m.path.suffix == ".onnx" and read[m.path] == FP32), None)
    if graph is None:
        raise UserError(f"--target {name} predicts latency from the fp32 ONNX graph's features: give the model's fp32 "
                        ".onnx too (its float export: quantized files are predicted from its features)")
    given = [Model(m.key, m.path, m.runtime, precision_label(read[m.path]), read[m.path])
             for m in fitting if m is not graph]
    rows = predicted_rows([Model(graph.key, graph.path, "onnxruntime", "fp32", FP32), *given], name, profile)
    for row in rows:
        console.print(predicted_row_text(row), markup=False)
    return rows


def precision_label(numerics: Numerics) -> str:
    """A readable precision for numerics read from a file: fp32, fp16, int8 static, int8 dynamic..."""
    if numerics.scheme in ("float", "unknown"):
        return numerics.weights
    return f"{numerics.weights} {numerics.scheme}"


def model_of(path: str) -> Model:
    file = Path(path)
    if not file.exists():
        raise UserError(f"{path}: no such model file")
    known = {suffix: backend for backend in backends.backends() for suffix in backend.suffixes}
    if file.suffix not in known:
        raise UserError(f"{path}: not a model file this tool benchmarks; give one of "
                        + ", ".join(f"{suffix} ({b.runtime_title})" for suffix, b in known.items())
                        + " (an OpenVINO .xml with its .bin beside it)")
    return Model(file.name, file, known[file.suffix].runtime, "unknown", UNKNOWN)


def bench(cfg: PipelineConfig, paths: list[str], target_names: list[str], console: Console,
          json_path: str | None = None) -> dict:
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
            predicted += bench_predicted(fitting, models, name, profile, console)
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
    result = {"rows": rows, "predicted": predicted}
    if rows:
        print_rows(rows, console)
    if json_path:
        write_json(Path(json_path), result)
        console.print(f"wrote {json_path}")
    return result


def check_json_path(path: Path) -> None:
    """`--json PATH` can be written, checked before minutes of timing."""
    shown = clip(str(path), 120)
    if path.is_dir():
        example = clip(str(path / "bench.json"), 140)
        raise UserError(f"--json {shown}: is a folder; give a file name, e.g. --json {example}")
    why = unwritable(path.parent)
    if why:
        raise UserError(f"--json {shown}: its folder {why}; give a path this user can write")


def print_rows(rows: list[dict], console: Console) -> None:
    table = Table(title="batch-1 latency (proxy = this host standing in for the device)")
    for column in ("target", "model", "label", "p50 ms", "95% interval", "CPU p50 ms", "p90 ms", "p99 ms", "img/s",
                   "RSS MB", "budget"):
        table.add_column(column, justify="right" if column.endswith(("ms", "MB", "/s", "interval")) else "left")
    for r in rows:
        if "latency_ms" not in r:
            short = "needs macOS" if r.get("error_kind") == "needs_macos" else "error (below)"
            table.add_row(r["target"], r["artifact"], r["label"], *["-"] * 7, short)
            continue
        lat, tp, b = r["latency_ms"], r["throughput"], r["budget"]
        ips = f"{tp['images_per_s']:.0f}" if tp.get("images_per_s") else "-"
        verdict = "[green]ok[/]" if b["latency_ok"] and b["memory_ok"] else "[red]over[/]"
        ci = lat.get("p50_interval")
        cpu = r.get("cpu_ms", {}).get("p50")
        table.add_row(r["target"], r["artifact"], r["label"], f"{lat['p50']:.3f}",
                      f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-", f"{cpu:.3f}" if cpu is not None else "-",
                      f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", ips, f"{r['model_rss_mb']:.0f}", verdict)
    console.print(table)
    for r in rows:
        head = f"{r['target']} / {r['artifact']}"
        for key in ("error", "note"):
            if r.get(key):
                console.print(escape(f"{head}: {r[key]}"))
        if "latency_ms" in r:
            lat, b = r["latency_ms"], r["budget"]
            console.print(escape(f"{head}: mean {lat['mean']:.3f} ± {lat['std']:.3f} ms over {r['runs']} runs"
                                 f"{timing_text(r)}, "
                                 f"load {r['load_ms']:.0f} ms, {r['model_bytes'] / 1e6:.2f} MB on disk, "
                                 f"budgets {b['latency_ms']:g} ms p90 / {b['memory_mb']:g} MB"))
        if "profile" in r:
            ops = ", ".join(f"{e['op_type']} ({e['precision']}) {100 * e['share']:.0f}%"
                            for e in r["profile"]["by_op_type"][:6])
            console.print(escape(f"{head} per-layer: {r['profile']['layers_ms']:.3f} ms in layers; {ops}"))
        if "comparison" in r:
            console.print(f"{escape(head)} vs {escape(r['comparison']['baseline'])}: "
                          f"{escape(describe_comparison(r['comparison'])).replace('**', '')}")
        if "diagnosis" in r:
            console.print(escape(f"{head}: {r['diagnosis']['verdict']}"))


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
