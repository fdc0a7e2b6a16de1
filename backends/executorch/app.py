"""The deploy folder's ExecuTorch parts: the .pte's tensors as ExecuTorch's runtime reads them (the `forward`
method's tensor meta; the export record where ExecuTorch is not installed). A .pte has no place for metadata:
labels.txt and preprocess.json say it, and the card has no line on it."""
from __future__ import annotations

from pathlib import Path

from backends.base import Backend

DTYPES = {"BYTE": "uint8", "CHAR": "int8", "SHORT": "int16", "INT": "int32", "LONG": "int64", "HALF": "float16",
          "FLOAT": "float32", "DOUBLE": "float64", "BOOL": "bool"}


def describe_io(path: Path, record: dict, data: dict) -> dict:
    """Shapes and dtypes (a .pte has no tensor names: `input 0`); the sizes are the planned maximum."""
    from backends.executorch.agent import runtime, stand_in
    from targets.agent.errors import AgentError

    try:
        _, Runtime = runtime()  # without executorch.exir's package code (its edge dialect tables and passes)
    except AgentError:
        return Backend.record_io(record, data, "ExecuTorch is not installed here")
    with stand_in("executorch.exir"):
        from executorch.exir.scalar_type import ScalarType

    meta = Runtime.get().load_program(Path(path)).load_method("forward").metadata

    def info(kind: str, i: int) -> dict:
        tensor = getattr(meta, f"{kind}_tensor_meta")(i)
        name = ScalarType(tensor.dtype()).name
        return {"name": f"{kind} {i}", "shape": list(tensor.sizes()), "dtype": DTYPES.get(name, name.lower())}

    return {"inputs": [info("input", i) for i in range(meta.num_inputs())],
            "outputs": [info("output", i) for i in range(meta.num_outputs())]}
