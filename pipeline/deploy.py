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


def latency_row(report: dict, target: str, artifact: str) -> dict:
    """The benchmark row of one artifact on one target ({} when there is none)."""
    return next((r for r in (report.get("latency") or {}).get("rows", [])
                 if r["target"] == target and r["artifact"] == artifact), {})


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
    host = latency_row(report, choice["target"], choice["artifact"]).get("host") or {}
    where = {"proxy": f"proxy: {host.get('cpu') or 'the build host'} standing in for the device, not its speed",
             "measured": "measured on the device"}.get(choice["label"], choice["label"])
    speed = f"p50 {latency['p50']:.3f} ms, p90 {latency['p90']:.3f} ms at batch 1 ({where})" if latency \
        else f"not timed ({choice['label']})"
    predicted = next((r["predicted"] for r in (report.get("latency") or {}).get("predicted", [])
                      if r["target"] == choice["target"] and r["artifact"] == choice["artifact"] and "predicted" in r),
                     None)
    if choice["label"] == "predicted" and predicted:
        lo_ms, hi_ms = predicted["interval_ms"]
        speed = (f"predicted {predicted['p50_ms']:.3f} ms at batch 1 ({predicted['level']:.0%} interval {lo_ms:.3f}-"
                 f"{hi_ms:.3f} ms) for {predicted['device']}, {predicted['runtime']}, {predicted['precision']}, from "
                 f"public measurements of {predicted['models']} other models (held-out median error "
                 f"{predicted['median_ape']:.0%}): not measured")
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


def embed_metadata(path: Path, runtime: str, meta: dict[str, str]) -> None:
    """Write `meta` into the (copied) model file where its format has a place for it: ONNX metadata_props,
    OpenVINO rt_info (under manifold_edge), Core ML user_defined_metadata. Each is saved beside and renamed.
    ExecuTorch .pte and LiteRT .tflite files are left as written: labels.txt and preprocess.json say it."""
    if runtime == "onnxruntime":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        kept = [p for p in model.metadata_props if p.key not in meta]
        del model.metadata_props[:]
        model.metadata_props.extend([*kept, *(onnx.StringStringEntryProto(key=k, value=v) for k, v in meta.items())])
        onnx.save(model, str(path.with_name("tmp-" + path.name)))
        path.with_name("tmp-" + path.name).replace(path)
    elif runtime == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        for key, value in meta.items():
            model.set_rt_info(value, ["manifold_edge", key])
        tmp = path.with_name("tmp-" + path.name)
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
        tmp.replace(path)
    elif runtime == "coreml":
        from targets.coreml import coremltools, quiet

        with quiet():  # coremltools' import and save notices
            model = coremltools().models.MLModel(str(path), skip_model_load=True)
            model.user_defined_metadata.update(meta)
            tmp = path.with_name("tmp-" + path.name)
            model.save(str(tmp))
        shutil.rmtree(path)
        tmp.rename(path)


def write_deploy(report: dict, run_dir: Path, out: Path | None = None) -> dict[str, str]:
    """Write deploy/<target>/ for every target with a choice; target -> folder. `out` replaces run_dir/deploy."""
    folder = Path(out) if out else Path(run_dir) / "deploy"
    check_folder(folder)
    building = folder.with_name(folder.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    (building / MARKER).write_text("written by manifold-edge: replaced whole by the next run or report\n")
    classes = report["stages"]["data"]["summary"]["classes"]
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
        spec = preprocess(report, choice["runtime"])
        card = model_card(report, choice, files)
        (target / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
        (target / "preprocess.json").write_text(json.dumps(spec, indent=2) + "\n")
        (target / "MODEL_CARD.md").write_text(card)
        embed_metadata(target / files[0], choice["runtime"], {"labels": json.dumps(classes),
                                                              "preprocess": json.dumps(spec), "model_card": card})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    building.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return written
