"""Run a Core ML ML program (its MIL ops, as coremltools loads them) with torch on the CPU.

Core ML cannot predict on Linux, so the simulated Core ML runner interprets the package's own program
instead: every op in order, each through a small torch function from `OPS` (backends/coreml/ops.py:
semantics and defaults as coremltools' op definitions state them). Weights are the package's own,
decompressed first (int8 and palettized constexpr ops expanded to constants).

Precision: arithmetic is float32 torch kernels; the output of every op that the program types fp16 is
rounded to fp16 (x.half().float()), so fp16 storage of every intermediate tensor is emulated and the
CPU stays fast. This simulates the program's ops and the fp16 rounding of each tensor, not Core ML's
own kernels, their accumulation order or precision inside an op, nor the Neural Engine.

Batching: the program was traced for one image, with constant shapes. A (B, C, H, W) batch runs as B
programs at once under torch.func.vmap (each sample sees the (1, C, H, W) it was traced for), or, if
vmap cannot run an op, one image at a time. Every op's result is checked against the shape the
program states for it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from backends.coreml.ops import OPS

SKIPPED = {"const", "classify"}  # constants are read where used; classify only attaches the labels


class UnsupportedOps(ValueError):
    """The program has ops this interpreter has no torch function for."""

    def __init__(self, op_types: list[str]):
        self.op_types = sorted(set(op_types))
        super().__init__(f"Core ML simulation has no implementation of MIL op(s) {', '.join(self.op_types)}")


@dataclass
class Step:
    op_type: str
    fn: Callable
    consts: dict           # input name -> value (constants and coremltools' defaults)
    refs: dict             # input name -> var name, or a list of (var name or constant) for tuple inputs
    outputs: list[str]
    shapes: list[tuple]    # static output shapes, as the program states them
    fp16: list[bool]       # outputs rounded to fp16 after the op: those the program types fp16, unless the op
    #                        only moves or selects values of fp16 inputs (already fp16-exact: see MOVES_VALUES)


# Ops whose outputs are values of their inputs (or zero): with fp16 inputs, already held fp16-exact, so a
# second rounding would change nothing (MIL makes their inputs and outputs the same dtype)
MOVES_VALUES = {"reshape", "reshape_like", "transpose", "squeeze", "expand_dims", "flatten2d", "slice_by_index",
                "slice_by_size", "concat", "split", "stack", "gather", "gather_along_axis", "tile", "identity",
                "relu", "max_pool", "reduce_max", "reduce_min"}


class Ref(str):
    """The name of a value computed earlier (as opposed to a constant)."""


def _constant(val):
    """A MIL constant as torch (float arrays as float32) or a Python scalar / string."""
    if isinstance(val, np.ndarray):
        array = np.ascontiguousarray(val)
        return torch.from_numpy(array.astype(np.float32) if array.dtype.kind == "f" else array)
    if isinstance(val, np.generic):
        return val.item()
    return val


def _input(var):
    return Ref(var.name) if var.val is None else _constant(var.val)


def _step(op) -> Step:
    from coremltools.converters.mil.mil import types

    values = {name: _constant(value) for name, value in op.default_inputs().items()}
    refs = {}
    for name, var in op.inputs.items():
        value = [_input(v) for v in var] if isinstance(var, (list, tuple)) else _input(var)
        if isinstance(value, Ref) or (isinstance(value, list) and any(isinstance(i, Ref) for i in value)):
            refs[name] = value
        else:
            values[name] = value
    return Step(op.op_type, OPS[op.op_type], values, refs, [o.name for o in op.outputs],
                [tuple(o.shape) for o in op.outputs],
                [o.dtype == types.fp16 and op.op_type not in MOVES_VALUES for o in op.outputs])


class MILProgram:
    """An ML program's main function compiled to a list of torch steps; call it on raw pixels (B, C, H, W)."""

    def __init__(self, program):
        from coremltools.converters.mil.mil import types

        function = program.functions["main"]
        ops = list(function.operations)
        unknown = [o.op_type for o in ops if o.op_type not in OPS and o.op_type not in SKIPPED]
        if unknown:
            raise UnsupportedOps(unknown)
        (self.input, var), = function.inputs.items()
        self.input_fp16 = var.dtype == types.fp16
        self.steps = [_step(o) for o in ops if o.op_type not in SKIPPED]
        classify = [o for o in ops if o.op_type == "classify"]
        self.output = classify[0].inputs["probabilities"].name if classify else function.outputs[0].name
        self.vmap = True

    def run(self, pixels: torch.Tensor) -> torch.Tensor:
        """One image, shaped as the program's input."""
        env = {self.input: pixels.half().float() if self.input_fp16 else pixels}
        for step in self.steps:
            inputs = dict(step.consts)
            for name, ref in step.refs.items():
                inputs[name] = [env[r] if isinstance(r, Ref) else r for r in ref] if isinstance(ref, list) \
                    else env[ref]
            result = step.fn(inputs, step.shapes)
            for name, value, shape, half in zip(step.outputs, result if isinstance(result, (tuple, list))
                                                 else (result,), step.shapes, step.fp16):
                if tuple(value.shape) != shape:
                    raise ValueError(f"MIL {step.op_type} -> {name}: computed shape {tuple(value.shape)}, "
                                     f"the program states {shape}")
                env[name] = value.half().float() if half else value
        return env[self.output]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) for a batch of images, each run as the program's batch-1 input."""
        samples = pixels[:, None]
        with torch.no_grad():
            if self.vmap:
                try:
                    return torch.func.vmap(self.run)(samples).flatten(1)
                except (RuntimeError, NotImplementedError):  # an op without a vmap rule: one at a time
                    self.vmap = False
            return torch.stack([self.run(s) for s in samples]).flatten(1)
