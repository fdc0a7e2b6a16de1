"""The deploy folder: `runs/<name>/deploy/<target>/` holds README.md and ship.json (the overall pick and the
answer per SDK, pipeline/ship.py) and one folder per runtime with a file to ship, `<target>/<runtime>/`: what
an app linking that SDK needs: the model file(s), labels.txt, preprocess.json and MODEL_CARD.md.

Files are copied out of the artifact cache (editing them never touches the cache). The whole folder is
built next to the old one and swapped in, so a reader never sees half of it. No torch here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import backends
from pipeline.app_files import latency_row, write_app_files
from pipeline.core.errors import UserError
from pipeline.core.fileio import unwritable
from pipeline.report.markdown import warning_lines
from targets.devices import model_files as with_sidecars

MARKER = ".manifold-edge-deploy"  # marks a folder this tool wrote, so it may replace it


def check_folder(folder: Path) -> None:
    """Refuse a deploy folder that is a file, holds files this tool did not write, or cannot be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder}: is a file; give a folder (new, empty, or one this tool wrote)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise UserError(f"--out {folder}: holds files manifold-edge did not write; give a new or empty folder "
                        "(nothing was changed)")
    why = unwritable(folder)
    if why:
        raise UserError(f"--out {folder}: {why}; give a writable folder")


def model_files(report: dict, artifact: str) -> list[Path]:
    """The cached file(s) of an export or quantize artifact (an OpenVINO IR is .xml + .bin; an ONNX model
    comes with its .ort)."""
    for stage in ("export", "quantize"):
        entry = report["stages"].get(stage)
        record = (entry or {}).get("summary", {}).get("artifacts", {}).get(artifact)
        if record:  # an ONNX model's .ort mobile sibling goes along: ORT Mobile apps load that one
            mobile = [Path(entry["artifact"]) / record["mobile"]["file"]] if record.get("mobile") else []
            return with_sidecars(Path(entry["artifact"]) / record["file"]) + mobile
    raise KeyError(artifact)


def target_readme(name: str, answer: dict, warnings: list[str]) -> str:
    """deploy/<target>/README.md: the evaluation's `warnings` (markdown lines: a model no better than guessing),
    the overall pick, then the answer for each SDK an app may link."""
    lines = [f"# {name}", "", *warnings, *([""] if warnings else [])]
    if answer.get("artifact"):
        state = "" if answer["separated"] else " (no single fastest runtime: see why)"
        lines += [f"**Overall pick: `{answer['runtime']}/{answer['artifact']}`**{state}: {answer['overall_why']}.", ""]
    else:
        lines += [f"**Nothing ships on {name}**: {answer['overall_why']}.", ""]
    lines += ["Your app already links one SDK: take the folder for it.", "", "| SDK (runtime) | folder | file | why |",
              "|---|---|---|---|"]
    for runtime, choice in answer["by_runtime"].items():
        folder = f"`{runtime}/`" if choice.get("artifact") else "-"
        shipped = "nothing ships"
        if choice.get("artifact"):
            shipped = f"`{choice['file']}` ({choice['artifact']})" if choice.get("file") else choice["artifact"]
        lines.append(f"| {backends.runtime_name(runtime)} | {folder} | {shipped} | {choice['why']} |")
    return "\n".join([*lines, ""])


def write_runtime_folder(report: dict, choice: dict, folder: Path) -> None:
    """deploy/<target>/<runtime>/: the chosen file(s) with labels.txt, preprocess.json and MODEL_CARD.md."""
    folder.mkdir(parents=True)
    if not choice.get("latency_ms"):
        error = latency_row(report, choice["target"], choice["artifact"]).get("error") or choice["label"]
        (folder / "README.md").write_text(
            f"# {choice['artifact']} was not timed on {choice['target']}\n\n{error}.\n\n"
            f"It was picked by the ship rule's order among the files within the budgets; see MODEL_CARD.md.\n")
    files = []
    for source in model_files(report, choice["artifact"]):
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / source.name)
        files.append(source.name)
    write_app_files(report, choice, folder, files)


def write_deploy(report: dict, run_dir: Path, out: Path | None = None) -> dict[str, str]:
    """Write deploy/<target>/ for every target: README.md and ship.json (the overall pick and the answer per
    SDK), and <runtime>/ for each runtime with a file to ship; target -> folder. `out` replaces run_dir/deploy."""
    folder = Path(out) if out else Path(run_dir) / "deploy"
    check_folder(folder)
    building = folder.with_name(folder.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    (building / MARKER).write_text("written by manifold-edge: replaced whole by the next run or report\n")
    written = {}
    warnings = warning_lines(report)
    for name, answer in (report.get("ship") or {}).items():
        target = building / name
        target.mkdir(parents=True)
        written[name] = str(folder / name)
        (target / "README.md").write_text(target_readme(name, answer, warnings))
        (target / "ship.json").write_text(json.dumps(answer, indent=2) + "\n")
        for runtime, choice in answer["by_runtime"].items():
            if choice.get("artifact"):
                write_runtime_folder(report, choice, target / runtime)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    building.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return written
