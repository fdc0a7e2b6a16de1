"""What goes beside a shipped model file: preprocess.json (how an app makes the input), MODEL_CARD.md (what the
model is and how it was measured), and the same written into the file where its format has a place for it.
No torch here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path


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


def write_app_files(report: dict, choice: dict, folder: Path, files: list[str]) -> None:
    """labels.txt, preprocess.json and MODEL_CARD.md beside the copied model `files` in `folder`, and the same
    embedded in the first file."""
    classes = report["stages"]["data"]["summary"]["classes"]
    spec = preprocess(report, choice["runtime"])
    card = model_card(report, choice, files)
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    (folder / "preprocess.json").write_text(json.dumps(spec, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(card)
    embed_metadata(folder / files[0], choice["runtime"], {"labels": json.dumps(classes),
                                                          "preprocess": json.dumps(spec), "model_card": card})
