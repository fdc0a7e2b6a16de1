"""Where the stages after training spend their time (issue 40): runs CONFIG (pipeline.toml) in this process with
export and everything after it forced (data, teacher and distill come from the cache: run the pipeline once
first, or copy a finished run's .cache/{data,teacher,distill}-* into --set run.output_dir), and writes per stage
its wall (report.json's stages.*.wall_s) and CPU seconds (its child processes' included), per backend the export
and quantize records' seconds, per backend and phase the calls, wall and CPU seconds of the expensive library
calls (torch.export, run_decompositions, XNNPACK's preprocess, the PT2E passes, converters, parity checks,
fallback steps...) of the backends that ran in this process (ExecuTorch runs in a worker where two cores are
usable, stages/formats.py: `--set export.processes=1 --set quantize.processes=1` profiles it here), per artifact
the evaluate wall and per target the benchmark wall with its runs, with this host's CPU, the load average before
and after, the commit and the date. Phases nest (to_edge_transform_and_lower holds run_decompositions and
preprocess); a backend's wall not in a phase is its imports and own work. Each call adds or replaces the entry
`--label` in --out, so before and after sit side by side.

    .venv/bin/python bench/post_training.py [CONFIG] [--set KEY=VALUE ...] [--label NAME] [--arm64]
        [--out bench/results/post_training.json]

evaluate.arm64 is set off (as on a fresh clone, where no emulated arm64 root is built) unless --arm64.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.fileio import read_json, write_json  # noqa: E402
from targets.agent.host import cpu_flags, cpu_name, usable_cores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("export", "quantize", "evaluate", "benchmark")
# (module, attribute path, phase): wrapped when the module is first imported, so imports stay inside the stages
PHASES = [
    ("torch.export", "export", "torch.export"),
    ("torch.export.exported_program", "ExportedProgram.run_decompositions", "run_decompositions"),
    ("executorch.exir", "to_edge_transform_and_lower", "to_edge_transform_and_lower"),
    ("executorch.exir.program._program", "EdgeProgramManager.to_executorch", "to_executorch"),
    ("executorch.backends.xnnpack.xnnpack_preprocess", "XnnpackBackend.preprocess", "xnnpack preprocess"),
    ("torchao.quantization.pt2e.quantize_pt2e", "prepare_pt2e", "pt2e prepare"),
    ("torchao.quantization.pt2e.quantize_pt2e", "convert_pt2e", "pt2e convert"),
    ("torch.onnx", "export", "torch.onnx.export"),
    ("onnxruntime.quantization", "quantize_static", "ort quantize_static"),
    ("onnxruntime.quantization", "quantize_dynamic", "ort quantize_dynamic"),
    ("openvino", "convert_model", "openvino convert_model"),
    ("nncf", "quantize", "nncf quantize"),
    ("litert_torch", "convert", "litert convert"),
    ("coremltools", "convert", "coremltools convert"),
    ("backends.base", "Backend.runner", "runner load"),
    ("backends.fallback", "with_fallback", "fallback loop"),
]

phases: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})))
current = {"stage": "", "backend": ""}
active: set = set()  # a phase inside itself (recursion) is counted once


def timed(fn, phase: str):
    def wrapper(*args, **kwargs):
        if phase in active:
            return fn(*args, **kwargs)
        active.add(phase)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            active.discard(phase)
            entry = phases[current["stage"] or "other"][current["backend"] or "stage"][phase]
            entry["calls"] += 1
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu
    wrapper.bench_phase = phase
    return wrapper


def patch(module, attribute: str, phase: str) -> None:
    *owner_path, name = attribute.split(".")
    owner = module
    for part in owner_path:
        owner = getattr(owner, part)
    original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    kind = type(original) if isinstance(original, (staticmethod, classmethod)) else None
    function = original.__func__ if kind else original
    if function is None or hasattr(function, "bench_phase"):
        return
    setattr(owner, name, kind(timed(function, phase)) if kind else timed(function, phase))


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Wraps a PHASES module's functions right after the module's own code runs."""

    def find_spec(self, fullname, path, target=None):
        if not any(module == fullname for module, *_ in PHASES):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                loader = spec.loader
                exec_module = loader.exec_module

                def run_then_patch(module, exec_module=exec_module):
                    exec_module(module)
                    for name, attribute, phase in PHASES:
                        if name == fullname:
                            patch(module, attribute, phase)
                loader.exec_module = run_then_patch
                return spec
        return None


def install() -> None:
    """Phases of modules already imported are patched now, the rest when imported; the stages' backend and
    target are tracked around Backend.export/quantize, the evaluate stage's artifacts and the benchmark's targets."""
    for name, attribute, phase in PHASES:
        if name in sys.modules:
            patch(sys.modules[name], attribute, phase)
    sys.meta_path.insert(0, PatchOnImport())

    import backends
    import backends.base
    import stages.benchmark
    import stages.evaluate

    def tracking(stage: str, fn, key, phase: str = "total"):
        def wrapper(*args, **kwargs):
            before = dict(current)
            current.update(stage=stage, backend=key(*args))
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = phases[stage][current["backend"]][phase]
                entry["calls"] += 1
                entry["wall_s"] += time.perf_counter() - wall
                entry["cpu_s"] += time.process_time() - cpu
                current.update(before)
        return wrapper

    backends.base.Backend.export = tracking("export", backends.base.Backend.export, lambda self, job: self.name)
    backends.base.Backend.quantize = tracking("quantize", backends.base.Backend.quantize, lambda self, job: self.name)
    # the export stage checks each file's parity after its backend's export
    backends.base.ExportJob.check_parity = tracking("export", backends.base.ExportJob.check_parity,
                                                    lambda job, label, record, *rest: backends.for_file(
                                                        record["file"]).name, "parity (runner included)")
    predictions = stages.evaluate.EvaluateStage._predictions
    stages.evaluate.EvaluateStage._predictions = staticmethod(tracking("evaluate", predictions,
                                                                       lambda path, *rest: Path(path).name))
    stages.benchmark.measure_target = tracking("benchmark", stages.benchmark.measure_target,
                                               lambda models, name, *rest: name)
    import stages.export
    import stages.quantize

    for cls in (stages.export.ExportStage, stages.quantize.QuantizeStage, stages.evaluate.EvaluateStage,
                stages.benchmark.BenchmarkStage):
        cls.run = counting_cpu(cls.name, cls.run)


stage_cpu: dict[str, float] = {}


def counting_cpu(stage: str, run):
    """A stage's CPU seconds: this process's threads, the child processes it waited for (agents), and what the
    live ones (the ExecuTorch worker, which serves export and quantize and is reaped later) spent meanwhile."""
    def wrapper(*args, **kwargs):
        before, live = os.times(), live_children_cpu()
        try:
            return run(*args, **kwargs)
        finally:
            after = os.times()
            stage_cpu[stage] = round(sum(after[:4]) - sum(before[:4]) + live_children_cpu() - live, 2)
    return wrapper


def live_children_cpu(pid: int | None = None) -> float:
    """CPU seconds of the live descendants of `pid` (this process) so far, from /proc (0 where there is none). A
    child reaped between two readings is in os.times() in full: the difference of the two readings takes off
    what it had spent before the first."""
    pid = pid or os.getpid()
    total = 0.0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + live_children_cpu(int(child))
    return total


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def rounded(tree):
    if isinstance(tree, dict):
        return {k: rounded(v) for k, v in tree.items()}
    return round(tree, 2) if isinstance(tree, float) else tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "pipeline.toml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="current")
    parser.add_argument("--arm64", action="store_true", help="leave evaluate.arm64 as the config says")
    parser.add_argument("--note", default="", help="what else to record beside the entry (the tree it ran)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/post_training.json"))
    args = parser.parse_args()
    overrides = list(args.set) + ([] if args.arm64 else ["evaluate.arm64=off"])

    install()
    from pipeline.api import run

    load_before = os.getloadavg()
    start = time.perf_counter()
    report = run(args.config, overrides, force="export", quiet=True)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()

    stages = {s: report["stages"][s]["wall_s"] for s in STAGES}
    records = {s: {k: a.get("seconds") for k, a in report["stages"][s]["summary"]["artifacts"].items()}
               for s in ("export", "quantize")}
    parity = {k: {f: a["parity"].get(f) for f in ("images", "rule", "max_abs_diff") if f in a["parity"]}
              for k, a in report["stages"]["export"]["summary"]["artifacts"].items() if "parity" in a}
    fallback = {k: {"steps": len(a["fallback"].get("steps", [])), "lowered": a["fallback"].get("lowered"),
                    "excluded": a["fallback"].get("excluded_names")}
                for k, a in report["stages"]["quantize"]["summary"]["artifacts"].items() if a.get("fallback")}
    timed_rows = [r for r in report["latency"]["rows"] if "latency_ms" in r]
    per_target = defaultdict(lambda: {"artifacts": 0, "runs": 0, "stopped": set()})
    for r in timed_rows:
        t = per_target[r["target"]]
        t["artifacts"] += 1
        t["runs"] += r["runs"]
        t["stopped"].add(r["timing"]["stopped"])
    for name, t in per_target.items():
        t["stopped"] = sorted(t["stopped"])
        t["wall_s"] = phases["benchmark"][name]["total"]["wall_s"]
    ships = {target: {runtime: r.get("artifact") for runtime, r in d.get("by_runtime", {}).items()}
             for target, d in (report.get("ship") or {}).items()}
    entry = {
        "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", ".") else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "host": {"cpu": cpu_name(), "flags": cpu_flags(), "cores": usable_cores()},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "overrides": overrides,
        "stages_wall_s": stages,
        "stages_cpu_s": {s: stage_cpu.get(s) for s in STAGES},
        "post_training_s": round(sum(stages.values()), 2),
        "run_wall_s": round(wall, 2),
        "backend_seconds": records,
        "phases": rounded({stage: {b: dict(p) for b, p in by.items()} for stage, by in phases.items()
                           if stage in ("export", "quantize", "evaluate")}),
        "benchmark_targets": rounded(dict(per_target)),
        "parity": parity,
        "fallback": fallback,
        "top1": {row["artifact"]: row.get("top1") for row in report["evaluation"]["artifacts"]},
        "ship": ships,
    }
    out = Path(args.out)
    results = read_json(out) if out.exists() else {"runs": {}}
    results["runs"][args.label] = entry
    write_json(out, results)
    print(f"{args.label}: post-training {entry['post_training_s']:.1f} s "
          f"({', '.join(f'{s} {v:.1f}' for s, v in stages.items())}), CPU {entry['stages_cpu_s']}, "
          f"load {entry['load_average']}")
    for stage in ("export", "quantize"):
        for backend, by in entry["phases"].get(stage, {}).items():
            shown = ", ".join(f"{p} {v['calls']}x {v['wall_s']:.1f}s" for p, v in by.items())
            print(f"  {stage}/{backend}: {shown}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
