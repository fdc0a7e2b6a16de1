"""report.json and the run-level facts: assembling a run's report from its stage records, rebuilding it from a
finished run's artifacts, and writing report.json, the plots, report.md (pipeline/report/markdown.py) and report.html
(pipeline/report/html.py)."""
from __future__ import annotations

import hashlib
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
from pipeline.fingerprint import ROOT
from pipeline.graph import STAGES, Pipeline, RunRecord
from pipeline.report.markdown import render_markdown
from pipeline.ship import choose_all
from pipeline.store import file_sha256

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
    the self-contained report.html. The deploy folders and the plots are kept where they were made of the same
    report (outputs_digest) and are on disk as written (OUTPUTS: every file's hash); else written again."""
    from pipeline.report.html import render_html

    ready = report.get("evaluation") and report.get("latency")
    report["ship"] = choose_all(report, activation_mb(fp32_onnx(report))) if ready else {}
    digest, deploy_folder = outputs_digest(report), str(Path(deploy_to) if deploy_to else run_dir / "deploy")
    kept = _kept_outputs(run_dir, digest, deploy_folder)
    if kept:
        report["deploy"], plots = kept["deploy"], kept["plots"]
    else:
        (run_dir / OUTPUTS).unlink(missing_ok=True)
        report["deploy"] = write_deploy(report, run_dir, deploy_to) if report["ship"] else {}
        plots = make_plots(report, run_dir)
        write_json(run_dir / OUTPUTS, {"digest": digest, "deploy": report["deploy"], "plots": plots,
                                       "deploy_folder": deploy_folder,
                                       "files": {p: file_sha256(Path(p)) for p in _outputs(report["deploy"], run_dir)}})
    write_json(run_dir / "report.json", report)
    title = report["config"]["report"]["title"]
    markdown = render_markdown(title, report, plots)
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", render_html(title, markdown, run_dir))


OUTPUTS = ".outputs.json"  # in the run folder: what the deploy folders and plots were made of, and their files
VOLATILE = ("wall_s", "finished", "peak_rss_mb", "rebuilt")  # run facts that no deploy file or plot shows


def outputs_digest(report: dict) -> str:
    """What the deploy folders and the plots are made from: the report without the run's timings, the stages'
    `cached` flags and the deploy paths, and the code that writes them (every source file of pipeline/, backends/
    and targets/, which the deploy folders' files and readers come from: an edit there writes them again)."""
    view = {k: v for k, v in report.items() if k != "deploy"}
    view["run"] = {k: v for k, v in report["run"].items() if k not in VOLATILE}
    view["stages"] = {n: {k: v for k, v in s.items() if k != "cached"} for n, s in report.get("stages", {}).items()}
    digest = hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode())
    for path in sorted(p for package in ("pipeline", "backends", "targets") for p in ROOT.glob(f"{package}/**/*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _outputs(deploy: dict[str, str], run_dir: Path) -> set[str]:
    """The files of the deploy folders (target -> folder) and of plots/."""
    files = {str(p) for folder in deploy.values() for p in Path(folder).rglob("*") if p.is_file()}
    return files | {str(p) for p in (run_dir / "plots").glob("*.png")}


def _kept_outputs(run_dir: Path, digest: str, deploy_folder: str) -> dict | None:
    """The previous OUTPUTS record where it was written for `digest` into `deploy_folder` and every file it lists
    is there unchanged, with nothing else in the deploy folders and plots/; else None. Read as untrusted data."""
    try:
        kept = read_json(run_dir / OUTPUTS)
        files = kept["files"]
        if kept["digest"] != digest or kept["deploy_folder"] != deploy_folder:
            return None
        if _outputs(kept["deploy"], run_dir) != set(files) or any(file_sha256(Path(p)) != h for p, h in files.items()):
            return None
        return {"deploy": dict(kept["deploy"]), "plots": dict(kept["plots"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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
        answer = (report.get("ship") or {}).get(name, {})
        picks = tuple(c["artifact"] for c in answer.get("by_runtime", {}).values() if c.get("artifact"))
        made[f"pareto:{name}"] = plots.pareto(name, rows, top1, target["latency_budget_ms"], floor,
                                              folder / f"pareto_{name}.png", answer.get("artifact"), picks)
        for row in rows:
            made[f"layers:{name}:{row['artifact']}"] = plots.layer_bars(name, row,
                                                                       folder / f"layers_{name}_{row['artifact']}.png")
    made = {k: str(v.relative_to(run_dir)) for k, v in made.items() if v is not None}
    for stale in folder.glob("*.png") if folder.is_dir() else []:
        if str(stale.relative_to(run_dir)) not in made.values():
            stale.unlink()
    return made
