"""What an artifact computes in, as a record rather than a label: the format of its weights and of its
activations, and how its activations are quantized. The export and quantize stages write it beside each
artifact's readable `precision` label; the benchmark, the latency predictor and the ship rule read this record,
never the label."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

FLOATS = ("fp32", "fp16")


@dataclass(frozen=True)
class Numerics:
    weights: str  # fp32 | fp16 | int8 | palette<bits> (Core ML palettization) | unknown
    activations: str  # fp32 | fp16 | int8 | unknown
    scheme: Literal["float", "static", "dynamic", "weights-only", "unknown"] = "float"

    @property
    def quantized(self) -> bool:
        """INT8 or compressed weights (what gets a diagnosis against its float sibling)."""
        return self.weights not in (*FLOATS, "unknown")

    @property
    def kind(self) -> str:
        """int8 for any quantized or compressed artifact, else its float format: the classes a target's
        `precision` preference names."""
        return "int8" if self.quantized else self.weights

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def of(cls, record: dict) -> Numerics:
        """The numerics of an artifact record (export.json, quantize.json, an evaluation or benchmark row)."""
        return cls(**record["numerics"])


FP32 = Numerics("fp32", "fp32")
UNKNOWN = Numerics("unknown", "unknown", "unknown")


def static_int8() -> dict[str, str]:
    return Numerics("int8", "int8", "static").as_dict()


def dynamic_int8() -> dict[str, str]:
    return Numerics("int8", "int8", "dynamic").as_dict()


def weights_only(weights: str, activations: str) -> dict[str, str]:
    return Numerics(weights, activations, "weights-only").as_dict()


def floating(weights: str, activations: str | None = None) -> dict[str, str]:
    return Numerics(weights, activations or weights).as_dict()
