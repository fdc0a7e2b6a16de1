"""What goes beside a shipped model file: preprocess.json (the file's own inputs and outputs, read from the file,
and how an app makes the input), MODEL_CARD.md (what the model is, what runs it, how it was measured), and the
same written into the file where its format has a place for it. No torch here.

The .tflite's metadata is written by MediaPipe's metadata writer, which runs in its own environment
(`make mediapipe`: MediaPipe 0.10.21 needs numpy 1.x; the releases since ship without the module the writer
imports), called through a subprocess.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import backends

log = logging.getLogger(__name__)

MEDIAPIPE_PYTHON = "MANIFOLD_EDGE_MEDIAPIPE_PYTHON"  # the MediaPipe environment's python, if not .venv/mediapipe
NORMALISE = "x = (pixel / 255 - mean[c]) / std[c]"
# The input MediaPipe's ImageClassifier takes (mediapipe/tasks/cc/vision/utils/image_tensor_specs.cc)
MEDIAPIPE_INPUT = "one 1 x height x width x 3 input (RGB, channels last), uint8 or float32"


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


def tensors(path: Path, runtime: str, report: dict, artifact: str) -> dict:
    """The file's inputs and outputs as its runtime reads them: name, shape (None or a name for a dynamic
    dimension) and dtype; Core ML features by kind (an image with its colour space and size, a multiarray, the
    class label, a logit per class) and the package's specificationVersion; LiteRT quantization parameters
    where a tensor is quantized, and the app-input record the export wrote into the .tflite (`app_input`: RGB
    pixels in, converted and normalised inside). Only a .pte without ExecuTorch installed is described from the
    export record."""
    if runtime == "onnxruntime":
        import onnx
        from onnx.helper import tensor_dtype_to_np_dtype

        graph = onnx.load(str(path), load_external_data=False).graph
        constants = {i.name for i in graph.initializer}

        def onnx_tensor(value) -> dict:
            t = value.type.tensor_type
            return {"name": value.name, "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                                  for d in t.shape.dim],
                    "dtype": tensor_dtype_to_np_dtype(t.elem_type).name}

        return {"inputs": [onnx_tensor(v) for v in graph.input if v.name not in constants],
                "outputs": [onnx_tensor(v) for v in graph.output]}
    if runtime == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(path))

        def port(p) -> dict:
            return {"name": p.get_any_name(), "shape": [d.get_length() if d.is_static else None
                                                        for d in p.get_partial_shape()],
                    "dtype": p.get_element_type().to_dtype().name}

        return {"inputs": [port(p) for p in model.inputs], "outputs": [port(p) for p in model.outputs]}
    if runtime == "coreml":
        from coremltools.proto import FeatureTypes_pb2 as types

        from backends.coreml.package import coremltools
        from pipeline.core.logs import quiet

        with quiet(logger="coremltools"):
            spec = coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()
        described = spec.description
        roles = {described.predictedFeatureName: "the top class's name",
                 described.predictedProbabilitiesName: "class name -> logit (the export adds no softmax: apply one "
                                                        "for probabilities)"}

        def feature(f) -> dict:
            kind = f.type.WhichOneof("Type")
            entry = {"name": f.name}
            if kind == "imageType":
                image = f.type.imageType
                entry.update(type="image", color=types.ImageFeatureType.ColorSpace.Name(image.colorSpace),
                             width=image.width, height=image.height)
            elif kind == "multiArrayType":
                array = f.type.multiArrayType
                entry.update(type="multiarray", shape=list(array.shape),
                             dtype=types.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower())
            elif kind == "dictionaryType":
                entry.update(type="dictionary", key=f.type.dictionaryType.WhichOneof("KeyType").removesuffix(
                    "KeyType"), value="double")
            else:
                entry["type"] = kind.removesuffix("Type")
            if f.name in roles:
                entry["meaning"] = roles[f.name]
            return entry

        return {"inputs": [feature(f) for f in described.input], "outputs": [feature(f) for f in described.output],
                "specification_version": spec.specificationVersion}
    if runtime == "litert":
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        from backends.litert.runner import app_input

        interpreter = Interpreter(model_path=str(path))

        def detail(d: dict) -> dict:
            entry = {"name": d["name"], "shape": d["shape"].tolist(), "dtype": np.dtype(d["dtype"]).name}
            q = d["quantization_parameters"]
            if len(q["scales"]):
                entry["quantization"] = {"scale": q["scales"].tolist(), "zero_point": q["zero_points"].tolist()}
            return entry

        found = {"inputs": [detail(d) for d in interpreter.get_input_details()],
                 "outputs": [detail(d) for d in interpreter.get_output_details()]}
        pixels = app_input(path)
        return {**found, "app_input": pixels} if pixels else found
    if runtime == "executorch":
        try:
            from executorch.runtime import Runtime
        except ImportError:
            data = report["stages"]["data"]["summary"]
            batch = artifact_record(report, artifact).get("max_batch", 1)
            return {"source": "the export record (ExecuTorch is not installed here)",
                    "inputs": [{"name": "input 0", "shape": [batch, data["channels"], data["img_size"],
                                                             data["img_size"]], "dtype": "float32"}],
                    "outputs": [{"name": "output 0", "shape": [batch, len(data["classes"])], "dtype": "float32"}]}
        from executorch.exir.scalar_type import ScalarType

        meta = Runtime.get().load_program(Path(path)).load_method("forward").metadata
        dtypes = {"BYTE": "uint8", "CHAR": "int8", "SHORT": "int16", "INT": "int32", "LONG": "int64",
                  "HALF": "float16", "FLOAT": "float32", "DOUBLE": "float64", "BOOL": "bool"}

        def info(kind: str, i: int) -> dict:
            tensor = getattr(meta, f"{kind}_tensor_meta")(i)
            name = ScalarType(tensor.dtype()).name
            return {"name": f"{kind} {i}", "shape": list(tensor.sizes()), "dtype": dtypes.get(name, name.lower())}

        return {"inputs": [info("input", i) for i in range(meta.num_inputs())],
                "outputs": [info("output", i) for i in range(meta.num_outputs())]}
    raise ValueError(f"no reader for runtime {runtime!r}")


def preprocess(report: dict, choice: dict, file: str, io: dict) -> dict:
    """preprocess.json: the file's inputs and outputs (`io`, tensors() of it) and how an app turns a picture into
    the first input. mean/std and the formula are there only where the app applies them (not for Core ML and the
    export's .tflite, which take pixels 0-255 and normalise inside)."""
    data = report["stages"]["data"]["summary"]
    size, channels = data["img_size"], data["channels"]
    first, output = io["inputs"][0], io["outputs"][0]
    spec = {"file": file, "runtime": choice["runtime"], "input_name": first["name"], "inputs": io["inputs"],
            "output_name": output["name"], "outputs": io["outputs"]}
    if "source" in io:
        spec["source"] = io["source"]
    spec.update(color="grayscale" if channels == 1 else "RGB", resize=[size, size],
                resize_method="bilinear, antialiased", pixel_range=[0, 255])
    if choice["runtime"] == "coreml":
        image = first["type"] == "image"
        spec.update(expects=f"an image ({first.get('color')}, {first.get('width')} x {first.get('height')})" if image
                    else f"a {first.get('dtype')} multiarray {first.get('shape')} of pixels 0-255, channels first",
                    formula="none: pass pixels 0-255 (the normalisation is inside the model)",
                    output="; ".join(f"{o['name']}: {o['meaning']}" for o in io["outputs"] if "meaning" in o))
        return spec
    shape = first["shape"]
    logits = "logits, one per class in labels.txt order (apply softmax for probabilities)"
    if "app_input" in io:  # the export's .tflite: RGB pixels in whatever the data's channels
        spec.update(color="RGB", layout="NHWC", shape=shape, dtype=first["dtype"],
                    expects=f"RGB pixels 0-255 as {first['dtype']}, channels last {shape}"
                            + (" (the model makes them grayscale: BT.601 luma, as PIL's convert(\"L\"))"
                               if channels == 1 else ""),
                    formula="none: pass pixels 0-255 (the normalisation is inside the model)", output=logits)
        return spec
    layout = "NCHW" if len(shape) == 4 and shape[1] == channels else \
        "NHWC" if len(shape) == 4 and shape[3] == channels else "as shape"
    formula = NORMALISE
    if "quantization" in first:
        q = first["quantization"]
        formula += f"; then q = round(x / {q['scale'][0]:g}) + {q['zero_point'][0]} ({first['dtype']} input)"
    batch = artifact_record(report, choice["artifact"]).get("max_batch", 1) if choice["runtime"] == "executorch" else 1
    if batch > 1:
        spec["batch"] = f"1 to {batch} (the .pte's sizes are the upper bound)"
    spec.update(layout=layout, shape=shape, dtype=first["dtype"], expects="a normalised tensor", mean=data["mean"],
                std=data["std"], formula=formula,
                output=logits + (f"; dequantize first: (q - {output['quantization']['zero_point'][0]}) * "
                          f"{output['quantization']['scale'][0]:g}" if "quantization" in output else ""))
    return spec


def profile(report: dict, target: str) -> dict:
    """The target's profile as the benchmark stage recorded it ({} when there is none)."""
    return ((report.get("latency") or {}).get("targets") or {}).get(target) or {}


def runtime_line(report: dict, choice: dict, files: list[str]) -> str:
    """The runtime with the version this run used, and the backend / delegate / plugin the file needs."""
    runtime, target = choice["runtime"], choice["target"]
    version = (report["run"].get("versions") or {}).get(backends.for_runtime(runtime).package) or "version not recorded"
    settings = profile(report, target)
    if runtime == "coreml":
        units = settings.get("compute_units")
        return (f"Core ML (the OS's; converted with coremltools {version}); compute units: "
                + (f"{units} ({target}'s profile)" if units else "not set by the target's profile (Core ML's "
                                                                 "default: ALL)"))
    needs = backends.for_runtime(runtime).app_needs(artifact_record(report, choice["artifact"]), settings)
    mobile = [f for f in files if f.endswith(".ort")]
    if mobile:
        needs += f"; {mobile[0]} is the same model for ONNX Runtime Mobile"
    return (f"{backends.runtime_name(runtime)} {version} (`{backends.for_runtime(runtime).package}`, the version this "
            f"run used); needs {needs}")


def minimum_os(report: dict, choice: dict, io: dict) -> str:
    """Core ML: the OS versions that run the package's specificationVersion (watchOS alone for a watch, iOS for a
    phone, macOS for a laptop); the other runtimes: not stated (their docs give no minimum for these versions)."""
    if choice["runtime"] != "coreml":
        return (f"not stated (the docs of {backends.runtime_name(choice['runtime'])}'s own library give no minimum "
                "OS for this version; check the library you link)")
    from backends.coreml.package import coremltools

    version = io["specification_version"]
    names: dict[str, str] = {}
    for alias, target in coremltools().target.__members__.items():  # iOS17, macOS14, watchOS10, tvOS17 share 8
        if target.value == version:
            platform = alias.rstrip("0123456789_")
            names[platform] = f"{platform} {alias[len(platform):].replace('_', '.')}"
    wanted = {"watch": ["watchOS"], "phone": ["iOS"], "laptop": ["macOS"]}.get(profile(
        report, choice["target"]).get("device"), list(names))
    return ", ".join(names[p] for p in wanted if p in names) + f" (Core ML specification version {version})"


def mixed_precision(report: dict, artifact: str) -> str | None:
    """For an INT8 file (static or dynamic), which ops its record read back as INT8 (the rest run in float), and
    what the accuracy fallback or the attention setting kept in float; None for float and weights-only files."""
    record = artifact_record(report, artifact)
    if (record.get("numerics") or {}).get("scheme") not in ("static", "dynamic"):
        return None
    ops = record.get("op_types") or {}
    kept = (record.get("fallback") or {}).get("excluded") or []
    attention = record.get("float_attention_matmuls") or []
    return "; ".join([f"INT8 ops: {', '.join(f'{op} x{n}' for op, n in sorted(ops.items()))}, the others in float"]
                     + ([f"kept in float by the accuracy fallback: {', '.join(map(str, kept))}"] if kept else [])
                     + ([f"{len(attention)} attention matmuls in float"] if attention else []))


def pixel_input(spec: dict) -> bool:
    """Whether the .tflite takes what MediaPipe's ImageClassifier feeds (MEDIAPIPE_INPUT) as pixels 0-255, the
    normalisation inside (the export's files)."""
    shape = spec["shape"]
    return "mean" not in spec and spec["layout"] == "NHWC" and len(shape) == 4 and shape[0] == 1 and shape[3] == 3 \
        and spec["dtype"] in ("uint8", "float32")


def mediapipe_verdict(spec: dict) -> str:
    """Whether MediaPipe's ImageClassifier can take the .tflite, from its input."""
    if pixel_input(spec):
        return "MediaPipe's ImageClassifier takes it"
    return (f"MediaPipe's ImageClassifier cannot take it: its input is a normalised {spec['dtype']} {spec['layout']} "
            f"{spec['shape']} tensor, and MediaPipe feeds {MEDIAPIPE_INPUT}")


def model_card(report: dict, choice: dict, files: list[str], io: dict, spec: dict, tflite: str | None = None) -> str:
    """MODEL_CARD.md: what the model is, what runs it (runtime version, backend, minimum OS), how it was made, how
    accurate and fast it is, and where that was measured. `io` and `spec` are the file's tensors() and
    preprocess(); `tflite` says what the .tflite's metadata holds."""
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
    mixed = mixed_precision(report, choice["artifact"])
    lines = [
        f"# {student['model']} for {choice['target']}: `{files[0]}`", "",
        f"- Runtime: {runtime_line(report, choice, files)}.",
        f"- Precision: {choice['precision']}" + (f"; mixed precision: {mixed}" if mixed else "")
        + f"; files: {', '.join(files)}.",
        f"- Minimum OS: {minimum_os(report, choice, io)}.",
    ]
    if tflite is not None:
        lines.append(f"- TFLite metadata: {tflite}; {mediapipe_verdict(spec)}.")
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


def mediapipe_python() -> Path | None:
    """The MediaPipe environment's python: $MANIFOLD_EDGE_MEDIAPIPE_PYTHON, else .venv/mediapipe in the
    checkout (`make mediapipe`); None when there is none."""
    path = Path(os.environ.get(MEDIAPIPE_PYTHON) or Path(__file__).resolve().parents[1] / ".venv" / "mediapipe" / "bin"
                / "python")
    return path if path.is_file() else None


def in_mediapipe(function: str, **kwargs):
    """Call `function` of this file in the MediaPipe environment (isolated: only this file is loaded there, by
    path) with JSON arguments on stdin; returns its JSON result."""
    python = mediapipe_python()
    code = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('app_files', "
            "sys.argv[1]); module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            "print(json.dumps(getattr(module, sys.argv[2])(**json.load(sys.stdin))))")
    done = subprocess.run([str(python), "-I", "-c", code, __file__, function], input=json.dumps(kwargs),
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{function} failed in the MediaPipe environment ({python}): "
                           + "\n".join(done.stderr.strip().splitlines()[-5:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_tflite_metadata(path: str, labels: list[str], spec: dict, card: str, name: str) -> None:
    """Runs in the MediaPipe environment: MediaPipe's metadata writer puts into the .tflite the model's name and
    card, its input (for a pixel input: an RGB image with mean 0 and std 1, so MediaPipe feeds pixels 0-255; else
    a normalised tensor described in words, not an image) and the classification output with its labels."""
    from mediapipe.tasks.metadata.metadata_schema_py_generated import ColorSpaceType
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    writer = metadata_writer.MetadataWriter.create(bytearray(Path(path).read_bytes()))
    writer.add_general_info(name, card)
    if pixel_input(spec):
        writer.add_image_input([0.0], [1.0], ColorSpaceType.RGB, description=f"{spec['expects']}; "
                                                                             f"{spec['formula']}")
    else:
        writer.add_feature_input(spec["input_name"], f"{spec['dtype']} {spec['layout']} {spec['shape']}, "
                                                     f"{spec['color']}: {spec['formula']}, mean {spec['mean']}, "
                                                     f"std {spec['std']}")
    writer.add_classification_output(metadata_writer.Labels().add(labels),
                                     description="a logit per class in labels order (no softmax)")
    model, _ = writer.populate()
    tmp = Path(path).with_name("tmp-" + Path(path).name)
    tmp.write_bytes(model)
    tmp.replace(path)


def embed_metadata(path: Path, runtime: str, meta: dict[str, str]) -> None:
    """Write `meta` (labels, preprocess, model_card) into the (copied) model file where its format has a place for
    it: ONNX metadata_props, OpenVINO rt_info (under manifold_edge), Core ML user_defined_metadata, TFLite metadata
    (MediaPipe's writer: labels, input, normalisation, the card as description). Each is saved beside and
    renamed; the .tflite only where the MediaPipe environment is (tflite_metadata() says so in the card). A .pte
    has no place: labels.txt and preprocess.json say it."""
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
        from backends.coreml.package import coremltools
        from pipeline.core.logs import quiet

        with quiet(logger="coremltools"):  # coremltools' import and save notices
            model = coremltools().models.MLModel(str(path), skip_model_load=True)
            model.user_defined_metadata.update(meta)
            tmp = path.with_name("tmp-" + path.name)
            model.save(str(tmp))
        shutil.rmtree(path)
        tmp.rename(path)
    elif runtime == "litert" and mediapipe_python() is not None:
        in_mediapipe("write_tflite_metadata", path=str(path), labels=json.loads(meta["labels"]),
                     spec=json.loads(meta["preprocess"]), card=meta["model_card"], name=path.stem)


def tflite_metadata(spec: dict) -> str:
    """What embed_metadata writes into the .tflite with this preprocess spec, in words."""
    if mediapipe_python() is None:
        return f"none (no MediaPipe environment here: `make mediapipe`, or set {MEDIAPIPE_PYTHON})"
    what = "an RGB image input of pixels 0-255 (mean 0, std 1: the normalisation is inside the model)" \
        if pixel_input(spec) else f"the input described in words (a normalised {spec['layout']} tensor, not an image)"
    return f"labels, {what}, and this card (MediaPipe's metadata writer)"


def write_app_files(report: dict, choice: dict, folder: Path, files: list[str]) -> None:
    """labels.txt, preprocess.json and MODEL_CARD.md beside the copied model `files` in `folder`, and the same
    embedded in the first file."""
    classes = report["stages"]["data"]["summary"]["classes"]
    path = folder / files[0]
    io = tensors(path, choice["runtime"], report, choice["artifact"])
    spec = preprocess(report, choice, path.name, io)
    card = model_card(report, choice, files, io, spec,
                      tflite_metadata(spec) if choice["runtime"] == "litert" else None)
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    (folder / "preprocess.json").write_text(json.dumps(spec, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(card)
    if choice["runtime"] == "litert" and mediapipe_python() is None:
        log.warning(f"{path.name}: no TFLite metadata written (no MediaPipe environment: `make mediapipe`, or set "
                    f"{MEDIAPIPE_PYTHON})")
    embed_metadata(path, choice["runtime"], {"labels": json.dumps(classes), "preprocess": json.dumps(spec),
                                             "model_card": card})
