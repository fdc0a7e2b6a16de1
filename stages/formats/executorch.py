"""ExecuTorch (.pte): the student lowered to the XNNPACK delegate, fp32 and INT8 (PT2E with the XNNPACK
quantizer), run by targets/executorch_runner.py.

- Batch: dynamic, 1 to `max_batch`; memory is planned for `max_batch` images. Where ExecuTorch's edge passes fix
  the batch (LeViT and EfficientViT split q, k, v off one projection's last dimension), batch 1, with a warning.
- Attention runs as explicit matmul + softmax (timm's `fused_attn` off, the same maths): exported, fused
  scaled_dot_product_attention decomposes into masking ops (eq, any, where) that XNNPACK does not take, and
  the default student ran 1.7x slower at batch 1 with them on the portable kernels.
- What stays outside XNNPACK on the portable CPU kernels is recorded: LayerNorm (no XNNPACK lowering in this
  ExecuTorch), and reshapes and slices whose shape involves the dynamic batch.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.core.errors import UserError, root_cause
from pipeline.core.section import Section

log = logging.getLogger(__name__)

PROBE_IMAGES = 256  # validation images for the sensitivity ranking
CALIBRATION_BATCH = 32


class ExecuTorchExportConfig(Section):
    enabled: bool = Field(True, description="also write model.pte: ExecuTorch, lowered to the XNNPACK delegate "
                                            "(fp32)")
    max_batch: int = Field(64, ge=1, le=4096, description="upper bound of the dynamic batch dimension; memory is "
                                                          "planned for it (the runner splits bigger batches); 1 for "
                                                          "models whose lowering fixes the batch (LeViT, EfficientViT)")


class ExecuTorchQuantizeConfig(Section):
    enabled: bool = Field(True, description="INT8 .pte via PT2E with the XNNPACK quantizer: static, per-channel "
                                            "weights, calibrated (needs export.executorch)")
    per_channel: bool = Field(True, description="per-output-channel weight scales (else one per tensor)")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export, the edge passes and torchao warn through Python warnings and logging; the native
    runtime logs through sys.stderr. cpuinfo's lines come from native code and cannot be caught here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _unfused(model):
    """A copy with timm's attention as explicit matmul + softmax (see the module docstring)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def _capture(model, shape: tuple[int, ...], max_batch: int):
    """torch.export with a dynamic batch. The example batch is 2: torch.export specialises a size-1 dim."""
    import torch

    if max_batch == 1:
        return torch.export.export(model, (torch.zeros(1, *shape),))
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=({0: batch},))


def _op_name(target) -> str | None:
    """'linear', 'native_layer_norm', 'slice_copy.Tensor' for an ATen/edge op; None for getitem, symbolic
    size arithmetic and the delegate calls themselves."""
    import torch

    op = getattr(target, "_op", target)  # an edge-dialect op wraps its ATen overload
    if not isinstance(op, torch._ops.OpOverload) or op.name().startswith("aten::sym_"):
        return None
    name = str(op)
    return name.removeprefix("aten.").removesuffix(".default")


QUANTIZE = ("quantized_decomposed.quantize_per_tensor", "quantized_decomposed.quantize_per_channel")
DEQUANTIZE = ("quantized_decomposed.dequantize_per_tensor", "quantized_decomposed.dequantize_per_channel")


def delegation(graph_module) -> dict:
    """Ops inside XNNPACK partitions and ops left on the portable kernels (executorch.devtools'
    get_delegation_info does the same but needs pandas); `int8_ops`: delegated ops XNNPACK runs on INT8
    data (_on_int8)."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    delegated, portable, int8 = Counter(), Counter(), Counter()
    partitions = 0
    for child in graph_module.children():
        if isinstance(child, LoweredBackendModule):
            partitions += 1
            for node in child.original_module.graph.nodes:
                name = _op_name(node.target) if node.op == "call_function" else None
                if name is None:
                    continue
                delegated[name] += 1
                if _on_int8(node, name):
                    int8[name] += 1
    for node in graph_module.graph.nodes:
        name = _op_name(node.target) if node.op == "call_function" else None
        if name is not None:
            portable[name] += 1
    return {"partitions": partitions, "delegated_ops": dict(sorted(delegated.items())),
            "undelegated_ops": dict(sorted(portable.items())), "int8_ops": dict(sorted(int8.items()))}


def _is(node, prefixes: tuple[str, ...]) -> bool:
    name = _op_name(node.target) if node.op == "call_function" else None
    return name is not None and name.startswith(prefixes)


def _on_int8(node, name: str) -> bool:
    """A linear or conv with INT8 weights; another op with a dequantized input and a quantized output."""
    if name.startswith(QUANTIZE + DEQUANTIZE) or not any(_is(i, DEQUANTIZE) for i in node.all_input_nodes):
        return False
    if name in ("linear", "convolution"):
        return len(node.args) > 1 and _is(node.args[1], DEQUANTIZE)
    return any(_is(user, QUANTIZE) for user in node.users)


def _lower(exported, path: Path, max_batch: int, int8: bool = False) -> dict:
    """to_edge_transform_and_lower with the XNNPACK partitioner, then the .pte. Returns delegation().

    An INT8 graph keeps its constant pads (Swin's window padding) on the portable kernels: XNNPACK takes pads
    in fp32 only, and a delegated pad after a dequantize made the program fail to load ("Failed to create
    StaticConstantPad node ... xnn_status_invalid_parameter"; ExecuTorch 1.5)."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ConstantPadConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    name = exported.graph_signature.user_inputs[0]
    configs = [c for c in ALL_PARTITIONER_CONFIGS if not (int8 and c is ConstantPadConfig)]
    edge = to_edge_transform_and_lower(exported, transform_passes=[_batch_still_dynamic(name)],
                                       partitioner=[XnnpackPartitioner(configs=configs)])
    program = edge.exported_program()
    record = delegation(program.graph_module)
    _widen_batch(program, name, max_batch)
    Path(path).write_bytes(edge.to_executorch().buffer)
    return record


class _FixedBatch(Exception):
    """Lowering fixed a dynamic batch at the example's size."""


def _batch_size(graph, name: str):
    """The batch dimension of the input placeholder `name`: an int, or a SymInt while it is dynamic; raises
    _FixedBatch where a dynamic batch has become a constant."""
    size = next(n for n in graph.nodes if n.op == "placeholder" and n.name == name).meta["val"].shape[0]
    if not isinstance(size, int) and not size.node.expr.free_symbols:
        raise _FixedBatch(int(size))
    return size


def _batch_still_dynamic(name: str):
    """A transform pass (the edge passes ran, partitioning has not): stop early, with _FixedBatch, where the edge
    passes fixed a dynamic batch at the example's size (LeViT: torch 2.14, ExecuTorch 1.5)."""
    from torch.fx.passes.infra.pass_base import PassResult

    def check(graph_module):
        _batch_size(graph_module.graph, name)
        return PassResult(graph_module, False)
    return check


def _widen_batch(program, name: str, max_batch: int) -> None:
    """Restore the batch's upper bound before memory planning. Lowering a stride-2 conv re-runs torch's fake
    conv, whose backend choice guards `batch < 16` at the example batch of 2: the bound drops to 15 and
    the planned input would refuse 16 images (seen on the convstem student: torch 2.14, ExecuTorch 1.5).
    XNNPACK reshapes at run time, so the wider plan is safe; tests run the largest batch."""
    from torch.utils._sympy.value_ranges import ValueRanges

    size = _batch_size(program.graph, name)
    if isinstance(size, int):
        return
    env, symbol = size.node.shape_env, size.node.expr
    env.var_to_range[symbol] = ValueRanges(env.var_to_range[symbol].lower, max_batch)


def _capture_and_lower(module, shape: tuple[int, ...], path: Path, max_batch: int, int8: bool = False
                       ) -> tuple[dict, int]:
    """The .pte for a batch of 1 to `max_batch`; where lowering fixes the batch, for batch 1 (the phone's).
    Returns delegation() and the batch planned."""
    if max_batch > 1:
        try:
            return _lower(_capture(module, shape, max_batch), path, max_batch, int8), max_batch
        except Exception as exc:  # the pass manager wraps what a pass raises
            if not _caused_by(exc, _FixedBatch):
                raise
    return _lower(_capture(module, shape, 1), path, 1, int8), 1


def _caused_by(exc: BaseException | None, kind: type) -> bool:
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc is not None


def _one_image_at_a_time(name: str, max_batch: int, planned: int) -> None:
    if planned < max_batch:
        log.warning(f"ExecuTorch: lowering {name} fixes its batch dimension, so its .pte takes one image at a "
                    f"time (export.executorch.max_batch = {max_batch} is not kept; the runner feeds batches in turn)")


def _failed(what: str, name: str, exc: BaseException) -> UserError:
    return UserError(f"ExecuTorch {what} of {name} failed: {root_cause(exc)}; the op may lack an ExecuTorch "
                     "kernel or an XNNPACK lowering")


def export(model, shape: tuple[int, ...], path: Path, max_batch: int, name: str = "the model") -> dict:
    """fp32 .pte, lowered to XNNPACK. Returns the delegation record and the planned max batch."""
    from targets.runtimes import require

    require("executorch", "executorch")
    with quiet():
        try:
            record, planned = _capture_and_lower(_unfused(model), shape, path, max_batch)
        except Exception as exc:  # torch.export and the edge passes raise many types; the innermost names the op
            raise _failed("export", name, exc) from None
    _one_image_at_a_time(name, max_batch, planned)
    record.pop("int8_ops")
    return {**record, "max_batch": planned}


@functools.cache
def _ptq_quantizer():
    """XNNPACKQuantizer without its conv + batch-norm patterns, which are for QAT: prepare_pt2e folds batch
    norm into the conv before annotating, so they match nothing here, yet tracing them took 98% of
    prepare_pt2e (3.4 s per call on the test model)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class PTQQuantizer(XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

    return PTQQuantizer


def _quantizer(per_channel: bool, keep: Callable | None = None):
    """The XNNPACK quantizer (static INT8, symmetric weights) on the nodes where `keep(node)` is true."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    quantizer = _ptq_quantizer()().set_global(get_symmetric_quantization_config(is_per_channel=per_channel,
                                                                                  is_dynamic=False))
    if keep is not None:
        quantizer.set_filter_function(keep)
    return quantizer


def _in_modules(names: list[str], inside: bool = True) -> Callable:
    """A node filter: true for nodes in (inside=False: outside) the named modules."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    filters = [get_module_name_filter(name) for name in names]
    return lambda node: any(f(node) for f in filters) == inside


def _fake_quantized(graph, calibration: np.ndarray, quantizer, batch: int):
    """prepare_pt2e, observe `calibration` in order (deterministic min/max), convert_pt2e: a torch module
    with quantize/dequantize ops, numerically what the INT8 program computes."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), batch):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + batch], dtype=np.float32)))
    with _no_qat_folding():
        return convert_pt2e(prepared)


@contextlib.contextmanager
def _no_qat_folding() -> Iterator[None]:
    """convert_pt2e folds quantization-aware-training conv + batch-norm patterns whenever a batch norm is left in
    the graph (one no conv precedes, such as EfficientViT's head), tracing about 90 pattern graphs per call: 21 of
    25 s of each convert on the zoo's EfficientViT-M0, for patterns post-training quantization never makes (the
    same module comes out; tests/test_executorch.py). Skipped while the block runs (torchao 0.18)."""
    from torchao.quantization.pt2e import quantize_pt2e

    fold = quantize_pt2e._fold_conv_bn_qat
    quantize_pt2e._fold_conv_bn_qat = lambda model: model
    try:
        yield
    finally:
        quantize_pt2e._fold_conv_bn_qat = fold


def _logits(module, images: np.ndarray, batch: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(images[i:i + batch], dtype=np.float32)))
                               .numpy() for i in range(0, len(images), batch)])


def candidate_modules(model) -> list[str]:
    """The layers the fallback may keep in float: every Linear and Conv (where the INT8 work is)."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def rank_sensitivity(model, graph, calibration: np.ndarray, images: np.ndarray, reference: np.ndarray,
                     per_channel: bool, batch: int) -> list[dict]:
    """Quantize one layer alone (fake-quantized in torch, not lowered: lowering takes seconds) and measure
    how far the logits move from fp32, relative to their variance. Most harmful first."""
    scores = []
    for name in candidate_modules(model):
        probe = _fake_quantized(graph, calibration, _quantizer(per_channel, _in_modules([name])), batch)
        logits = _logits(probe, images, batch)
        scores.append({"node": name, "relative_mse": float(((logits - reference) ** 2).mean() / reference.var())})
    return sorted(scores, key=lambda s: -s["relative_mse"])


def _torch_graph(model, shape: tuple[int, ...], max_batch: int):
    """The graph PT2E prepares and calibrates, and the fallback ranks layers on (torch work), and its batch:
    batches of CALIBRATION_BATCH also where the program takes one image at a time because its lowering fixes the
    batch (LeViT, EfficientViT: torch.export keeps it dynamic); the program's batch where torch.export cannot."""
    try:
        return _capture(model, shape, max(max_batch, CALIBRATION_BATCH)).module(), CALIBRATION_BATCH
    except Exception:
        if max_batch >= CALIBRATION_BATCH:
            raise
        return _capture(model, shape, max_batch).module(), max_batch


def quantize(model, shape: tuple[int, ...], dst: Path, calibration: np.ndarray, val_images: np.ndarray,
             val_labels: np.ndarray, max_drop: float, max_fallback_layers: int, per_channel: bool,
             max_batch: int = 64, name: str = "the model") -> dict:
    """INT8 .pte (static: weights and activations, calibrated on `calibration`), then while the INT8
    program's top-1 on the validation images is more than `max_drop` points below fp32 torch's, the next
    most sensitive layer stays float (at most `max_fallback_layers`).

    Returns stages.quantize.fallback.Fallback's dict plus `op_types` (ops XNNPACK runs on INT8 data) and
    the delegation record of the last program."""
    from stages.quantize.fallback import with_fallback
    from targets.executorch_runner import ExecuTorchRunner
    from targets.runtimes import predict, require

    require("executorch", "executorch")
    require("torchao", "executorch")
    model = _unfused(model)
    try:
        with quiet():
            graph, batch = _torch_graph(model, shape, max_batch)
    except Exception as exc:
        raise _failed("INT8 capture", name, exc) from None
    lowered: dict = {}  # the delegation record of the last program written

    def quantized_top1(excluded: list[str]) -> float:
        with quiet():
            converted = _fake_quantized(graph, calibration, _quantizer(per_channel, _in_modules(excluded, False)),
                                        batch)
            try:
                # a fallback step lowers again: at the batch the first lowering could keep
                record, lowered["max_batch"] = _capture_and_lower(converted, shape, dst,
                                                                  lowered.get("max_batch", max_batch), int8=True)
                lowered.update(record)
            except Exception as exc:
                raise _failed("INT8 lowering", name, exc) from None
        return float(100 * (predict(ExecuTorchRunner(dst), [val_images]).argmax(1) == val_labels).mean())

    def rank() -> list[dict]:
        images = val_images[:PROBE_IMAGES]
        with quiet():
            return rank_sensitivity(model, graph, calibration, images, _logits(model, images, batch), per_channel,
                                    batch)

    fp32 = float(100 * (_logits(model, val_images, batch).argmax(1) == val_labels).mean())
    result = with_fallback("ExecuTorch INT8", fp32, max_drop, max_fallback_layers, quantized_top1, rank)
    _one_image_at_a_time(name, max_batch, lowered["max_batch"])
    return {**result.as_dict(), "op_types": lowered.pop("int8_ops"), **lowered}
