"""The deploy folder's ONNX parts: the graph's inputs and outputs as the `onnx` package reads them, the .ort
beside the file, and the metadata written into the file's metadata_props."""
from __future__ import annotations

from pathlib import Path


def describe_io(path: Path, record: dict, data: dict) -> dict:
    """The graph's inputs (initializers left out) and outputs: name, shape (the dim_param, e.g. "batch", for a
    named dynamic dimension), dtype."""
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


def file_notes(files: list[str]) -> list[str]:
    """The .ort sibling: the same model in ONNX Runtime Mobile's format."""
    return [f"{f} is the same model for ONNX Runtime Mobile" for f in files if f.endswith(".ort")][:1]


def embed_metadata(path: Path, meta: dict[str, str]) -> None:
    """`meta` as the model's metadata_props (replacing entries of the same keys), saved beside and renamed."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend([*kept, *(onnx.StringStringEntryProto(key=k, value=v) for k, v in meta.items())])
    onnx.save(model, str(path.with_name("tmp-" + path.name)))
    path.with_name("tmp-" + path.name).replace(path)
