"""The deploy folder's OpenVINO parts: the IR's inputs and outputs as OpenVINO reads them, and the metadata
written into its rt_info."""
from __future__ import annotations

from pathlib import Path


def describe_io(path: Path, record: dict, data: dict) -> dict:
    """`openvino.Core().read_model`'s inputs and outputs: name, shape (None for a dynamic dimension), dtype."""
    import openvino as ov

    model = ov.Core().read_model(str(path))

    def port(p) -> dict:
        return {"name": p.get_any_name(), "shape": [d.get_length() if d.is_static else None
                                                    for d in p.get_partial_shape()],
                "dtype": p.get_element_type().to_dtype().name}

    return {"inputs": [port(p) for p in model.inputs], "outputs": [port(p) for p in model.outputs]}


def embed_metadata(path: Path, meta: dict[str, str]) -> None:
    """`meta` in the IR's rt_info under manifold_edge; the .xml and its .bin saved beside and renamed."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    for key, value in meta.items():
        model.set_rt_info(value, ["manifold_edge", key])
    tmp = path.with_name("tmp-" + path.name)
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
    tmp.replace(path)
