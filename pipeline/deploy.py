"""The deploy folder: `runs/<name>/deploy/<target>/` holds what an app needs for the model chosen for
that target (pipeline/ship.py): the model file(s), labels.txt, preprocess.json and MODEL_CARD.md.

Files are copied out of the artifact cache (editing them never touches the cache). The whole folder is
built next to the old one and swapped in, so a reader never sees half of it. No torch here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.errors import UserError

SIDE_FILES = {".xml": (".bin",), ".onnx": (".onnx.data",)}  # a model file's companions, by suffix


def model_files(report: dict, artifact: str) -> list[Path]:
    """The cached file(s) of an export or quantize artifact (an OpenVINO IR is .xml + .bin)."""
    for stage in ("export", "quantize"):
        entry = report["stages"].get(stage)
        record = (entry or {}).get("summary", {}).get("artifacts", {}).get(artifact)
        if record:
            main = Path(entry["artifact"]) / record["file"]
            sides = [main.with_suffix(suffix) for suffix in SIDE_FILES.get(main.suffix, ())]
            return [main, *[p for p in sides if p.exists()]]
    raise KeyError(artifact)


def preprocess(report: dict, runtime: str) -> dict:
    """How an app turns a picture into the model's input, from the data stage's record."""
    data = report["stages"]["data"]["summary"]
    size, channels = data["img_size"], data["channels"]
    spec = {"input_name": "input", "layout": "NCHW", "shape": [1, channels, size, size], "dtype": "float32",
            "color": "grayscale" if channels == 1 else "RGB", "resize": [size, size],
            "resize_method": "bilinear, antialiased", "pixel_range": [0, 255], "mean": data["mean"],
            "std": data["std"], "output_name": "logits", "output": "logits (apply softmax for probabilities)"}
    if runtime == "coreml":
        coreml = report["config"]["export"]["coreml"]
        spec.update(input_name="image", expects="image pixels (normalisation is inside the model)"
                    if coreml["input"] == "image" else "float tensor of 0-255 pixels (normalisation is inside "
                                                       "the model)", formula="none: pass pixels")
    else:
        spec.update(expects="normalised tensor", formula="x = (pixel / 255 - mean[c]) / std[c]")
    return spec


def model_card(report: dict, choice: dict, files: list[str]) -> str:
    """MODEL_CARD.md: what the model is, how it was made, how accurate and fast it is, and where that was measured."""
    ev, run, cfg = report["evaluation"], report["run"], report["config"]
    teacher, student = ev["teacher"], ev["student"]
    distill = report["stages"]["distill"]["summary"]
    lo, hi = choice["delta_interval"]
    latency = choice.get("latency_ms")
    row = next((r for r in (report.get("latency") or {}).get("rows", [])
                if r["target"] == choice["target"] and r["artifact"] == choice["artifact"]), {})
    host = row.get("host") or {}
    where = {"proxy": f"proxy: {host.get('cpu') or 'the build host'} standing in for the device, not its speed",
             "measured": "measured on the device"}.get(choice["label"], choice["label"])
    speed = f"p50 {latency['p50']:.3f} ms, p90 {latency['p90']:.3f} ms at batch 1 ({where})" if latency \
        else f"not timed ({choice['label']})"
    manifold = (f" + the manifold loss (student blocks {distill['student_layers']} <- teacher blocks "
                f"{distill['teacher_layers']})" if distill["manifold"] else "")
    return "\n".join([
        f"# {student['model']} for {choice['target']}: `{files[0]}`", "",
        f"- Runtime: {choice['runtime']}, precision: {choice['precision']}; files: {', '.join(files)}.",
        f"- Task: image classification, {len(report['stages']['data']['summary']['classes'])} classes "
        f"(labels.txt, in output order); inputs as in preprocess.json.",
        f"- Student: `{student['model']}`, {student['params']:,} parameters, distilled from the teacher "
        f"`{teacher['model']}` ({teacher['params']:,} parameters) with KD `{distill['kd']}`{manifold}.",
        f"- Test top-1 on the {ev['split']} split ({ev['images']} images): teacher {teacher['top1']:.2f}%, "
        f"student (torch fp32) {student['top1']:.2f}%, this file {choice['top1']:.2f}% "
        f"({choice['evaluation']}; {choice['delta_top1']:+.2f} points, 95% interval {lo:+.2f} to {hi:+.2f}"
        + (", equal within noise" if choice["within_noise"] else "") + ").",
        f"- Latency on {choice['target']}: {speed}.",
        f"- Why this file: {choice['why']}.",
        f"- Made by manifold-edge {run['versions'].get('manifold-edge') or ''} run `{run['name']}`, config "
        f"`{run['config_hash'][:12]}`, seed {run['seed']}; licence: {cfg['export']['coreml']['license']}.", ""])


def write_deploy(report: dict, run_dir: Path, out: Path | None = None) -> dict[str, str]:
    """Write deploy/<target>/ for every target with a choice; target -> folder. `out` replaces run_dir/deploy."""
    folder = Path(out) if out else Path(run_dir) / "deploy"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: the deploy folder's place holds a file; remove it or give another --out")
    building = folder.with_name(folder.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    classes = report["stages"]["data"]["summary"]["classes"]
    written = {}
    for name, choice in (report.get("ship") or {}).items():
        if not choice.get("artifact"):
            continue
        target = building / name
        target.mkdir(parents=True)
        files = []
        for source in model_files(report, choice["artifact"]):
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / source.name)
            files.append(source.name)
        (target / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
        (target / "preprocess.json").write_text(json.dumps(preprocess(report, choice["runtime"]), indent=2) + "\n")
        (target / "MODEL_CARD.md").write_text(model_card(report, choice, files))
        written[name] = str(folder / name)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    if building.exists():
        building.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return written
