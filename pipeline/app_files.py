"""What goes beside a shipped model file: preprocess.json (the file's own inputs and outputs, read from the file,
and how an app makes the input), MODEL_CARD.md (what the model is, what runs it, how it was measured), and the
same written into the file where its format has a place for it. No torch here, and no runtime: each format's
reading and writing of its files is its backend's (Backend.describe_io, embed_metadata... in
backends/<name>/app.py), found by the runtime's name.
"""
from __future__ import annotations

import json
from pathlib import Path

import backends
from pipeline.report.markdown import matched_units

NORMALISE = "x = (pixel / 255 - mean[c]) / std[c]"


def latency_row(report: dict, target: str, artifact: str) -> dict:
    """The benchmark row of one artifact on one target ({} when there is none)."""
    return next((r for r in (report.get("latency") or {}).get("rows", [])
                 if r["target"] == target and r["artifact"] == artifact), {})


def artifact_record(report: dict, artifact: str) -> dict:
    """The export or quantize stage's record of an artifact ({} when neither has it)."""
    for stage in ("quantize", "export"):
        record = (((report["stages"].get(stage) or {}).get("summary") or {}).get("artifacts") or {}).get(artifact)
        if record:
            return record
    return {}


def preprocess(report: dict, choice: dict, file: str, io: dict) -> dict:
    """preprocess.json: the file's inputs and outputs (`io`, its backend's describe_io()) and how an app turns a
    picture into the first input. mean/std and the formula are there only where the app applies them: a file that
    takes pixels 0-255 and normalises inside (Core ML, the export's .tflite) gets its backend's pixel_preprocess()
    fields instead."""
    data = report["stages"]["data"]["summary"]
    size, channels = data["img_size"], data["channels"]
    first, output = io["inputs"][0], io["outputs"][0]
    spec = {"file": file, "runtime": choice["runtime"], "input_name": first["name"], "inputs": io["inputs"],
            "output_name": output["name"], "outputs": io["outputs"]}
    if "source" in io:
        spec["source"] = io["source"]
    spec.update(color="grayscale" if channels == 1 else "RGB", resize=[size, size],
                resize_method="bilinear, antialiased", pixel_range=[0, 255])
    pixels = backends.for_runtime(choice["runtime"]).pixel_preprocess(io, data)
    if pixels:
        spec.update(pixels)
        return spec
    shape = first["shape"]
    logits = "logits, one per class in labels.txt order (apply softmax for probabilities)"
    layout = "NCHW" if len(shape) == 4 and shape[1] == channels else \
        "NHWC" if len(shape) == 4 and shape[3] == channels else "as shape"
    formula = NORMALISE
    if "quantization" in first:
        q = first["quantization"]
        formula += f"; then q = round(x / {q['scale'][0]:g}) + {q['zero_point'][0]} ({first['dtype']} input)"
    batch = artifact_record(report, choice["artifact"]).get("max_batch", 1)  # a dynamic batch's upper bound
    if batch > 1:
        spec["batch"] = f"1 to {batch} (the {Path(file).suffix}'s sizes are the upper bound)"
    spec.update(layout=layout, shape=shape, dtype=first["dtype"], expects="a normalised tensor", mean=data["mean"],
                std=data["std"], formula=formula,
                output=logits + (f"; dequantize first: (q - {output['quantization']['zero_point'][0]}) * "
                          f"{output['quantization']['scale'][0]:g}" if "quantization" in output else ""))
    return spec


def profile(report: dict, target: str) -> dict:
    """The target's profile as the benchmark stage recorded it ({} when there is none)."""
    return ((report.get("latency") or {}).get("targets") or {}).get(target) or {}


def runtime_line(report: dict, choice: dict, files: list[str]) -> str:
    """The runtime with the version this run used, and the backend / delegate / plugin the file needs (its
    backend's runtime_line())."""
    backend = backends.for_runtime(choice["runtime"])
    version = (report["run"].get("versions") or {}).get(backend.package) or "version not recorded"
    return backend.runtime_line(version, artifact_record(report, choice["artifact"]), profile(report, choice["target"]),
                                choice["target"], files)


def minimum_os(report: dict, choice: dict, io: dict) -> str:
    """The OS versions that run the file, as its backend states them (Core ML: from the package's
    specificationVersion; the others: not stated)."""
    return backends.for_runtime(choice["runtime"]).minimum_os(io, profile(report, choice["target"]))


def mixed_precision(report: dict, artifact: str) -> str | None:
    """For an INT8 file (static or dynamic), which ops its record read back as INT8 (the rest run in float), and
    what the accuracy fallback or the attention setting kept in float; None for float and weights-only files."""
    record = artifact_record(report, artifact)
    if (record.get("numerics") or {}).get("scheme") not in ("static", "dynamic"):
        return None
    ops = record.get("op_types") or {}
    fallback = record.get("fallback") or {}
    kept = fallback.get("excluded_names", fallback.get("excluded")) or []
    attention = record.get("float_attention_matmuls") or []
    return "; ".join([f"INT8 ops: {', '.join(f'{op} x{n}' for op, n in sorted(ops.items()))}, the others in float"]
                     + ([f"kept in float by the accuracy fallback: {', '.join(map(str, kept))}"
                         + (f" ({len(kept)} of {fallback['layers']} layers)" if fallback.get("layers") else "")]
                        if kept else [])
                     + ([f"{len(attention)} attention matmuls in float"] if attention else []))


def model_card(report: dict, choice: dict, files: list[str], io: dict, spec: dict) -> str:
    """MODEL_CARD.md: what the model is, what runs it (runtime version, backend, minimum OS), how it was made, how
    accurate and fast it is, and where that was measured. `io` and `spec` are the file's describe_io() and
    preprocess(); the backend's metadata_note() says what the file's metadata holds, where it has a line."""
    ev, run, cfg = report["evaluation"], report["run"], report["config"]
    teacher, student = ev["teacher"], ev["student"]
    distill = report["stages"]["distill"]["summary"]
    lo, hi = choice["delta_interval"]
    latency = choice.get("latency_ms")
    host = latency_row(report, choice["target"], choice["artifact"]).get("host") or {}
    where = {"proxy": f"proxy: {host.get('cpu') or 'the build host'} standing in for the device, not its speed",
             "measured": "measured on the device"}.get(choice["label"], choice["label"])
    ci = (latency or {}).get("p50_interval")
    level = f"{latency['confidence']:.0%} " if ci and latency.get("confidence") else ""
    speed = (f"p50 {latency['p50']:.3f} ms" + (f" ({level}interval {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
             + f", p90 {latency['p90']:.3f} ms at batch 1 ({where})") if latency else f"not timed ({choice['label']})"
    predicted = next((r["predicted"] for r in (report.get("latency") or {}).get("predicted", [])
                      if r["target"] == choice["target"] and r["artifact"] == choice["artifact"] and "predicted" in r),
                     None)
    if choice["label"] == "predicted" and predicted:
        lo_ms, hi_ms = predicted["interval_ms"]
        speed = (f"predicted {predicted['p50_ms']:.3f} ms at batch 1 ({predicted['level']:.0%} interval {lo_ms:.3f}-"
                 f"{hi_ms:.3f} ms) for {predicted['device']}, {predicted['runtime']}, {predicted['precision']}, from "
                 f"public measurements of {predicted['models']} other models (held-out median error "
                 f"{predicted['median_ape']:.0%}): not measured")
    manifold = f" + the manifold loss ({matched_units(distill)})" if distill["manifold"] else ""
    mixed = mixed_precision(report, choice["artifact"])
    lines = [
        f"# {student['model']} for {choice['target']}: `{files[0]}`", "",
        f"- Runtime: {runtime_line(report, choice, files)}.",
        f"- Precision: {choice['precision']}" + (f"; mixed precision: {mixed}" if mixed else "")
        + f"; files: {', '.join(files)}.",
        f"- Minimum OS: {minimum_os(report, choice, io)}.",
    ]
    note = backends.for_runtime(choice["runtime"]).metadata_note(spec)
    if note is not None:
        lines.append(f"- {note}.")
    return "\n".join([
        *lines,
        f"- Task: image classification, {len(report['stages']['data']['summary']['classes'])} classes "
        f"(labels.txt, in output order); inputs and outputs as in preprocess.json.",
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


def write_app_files(report: dict, choice: dict, folder: Path, files: list[str]) -> None:
    """labels.txt, preprocess.json and MODEL_CARD.md beside the copied model `files` in `folder`, and the same
    embedded in the first file where its format has a place for it (its backend's embed_metadata())."""
    backend = backends.for_runtime(choice["runtime"])
    data = report["stages"]["data"]["summary"]
    classes = data["classes"]
    path = folder / files[0]
    io = backend.describe_io(path, artifact_record(report, choice["artifact"]), data)
    spec = preprocess(report, choice, path.name, io)
    spec["precision"] = choice["precision"]
    mixed = mixed_precision(report, choice["artifact"])
    if mixed:
        spec["mixed_precision"] = mixed
    card = model_card(report, choice, files, io, spec)
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    (folder / "preprocess.json").write_text(json.dumps(spec, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(card)
    backend.embed_metadata(path, {"labels": json.dumps(classes), "preprocess": json.dumps(spec), "model_card": card})
