"""The deploy folder: `runs/<name>/deploy/<target>/` holds what an app needs for the model chosen for
that target (pipeline/ship.py): the model file(s), labels.txt, preprocess.json and MODEL_CARD.md.

Files are copied out of the artifact cache (editing them never touches the cache). The whole folder is
built next to the old one and swapped in, so a reader never sees half of it. No torch here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.app_files import latency_row, write_app_files
from pipeline.errors import UserError
from pipeline.fileio import unwritable
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


def write_deploy(report: dict, run_dir: Path, out: Path | None = None) -> dict[str, str]:
    """Write deploy/<target>/ for every target with a choice; target -> folder. `out` replaces run_dir/deploy."""
    folder = Path(out) if out else Path(run_dir) / "deploy"
    check_folder(folder)
    building = folder.with_name(folder.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    (building / MARKER).write_text("written by manifold-edge: replaced whole by the next run or report\n")
    written = {}
    for name, choice in (report.get("ship") or {}).items():
        target = building / name
        target.mkdir(parents=True)
        written[name] = str(folder / name)
        if not choice.get("artifact"):
            (target / "README.md").write_text(f"# Nothing ships on {name}\n\n{choice['why']}.\n")
            continue
        if not choice.get("latency_ms"):
            error = latency_row(report, name, choice["artifact"]).get("error") or choice["label"]
            (target / "README.md").write_text(
                f"# {choice['artifact']} was not timed on {name}\n\n{error}.\n\n"
                f"It ships as the smallest file within the accuracy budget; see MODEL_CARD.md.\n")
        files = []
        for source in model_files(report, choice["artifact"]):
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / source.name)
            files.append(source.name)
        write_app_files(report, choice, target, files)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    building.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return written
