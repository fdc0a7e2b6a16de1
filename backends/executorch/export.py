"""ExecuTorch (.pte) export: the student lowered to the XNNPACK delegate (fp32), run by
backends/executorch/runner.py; INT8 in backends/executorch/quantize.py, which lowers through the same code.

- Batch: dynamic, 1 to `max_batch`; memory is planned for `max_batch` images. Where ExecuTorch's edge passes fix
  the batch (LeViT and EfficientViT split q, k, v off one projection's last dimension), batch 1, with a warning.
- Attention runs as explicit matmul + softmax (timm's `fused_attn` off, the same maths): exported, fused
  scaled_dot_product_attention decomposes into masking ops (eq, any, where) that XNNPACK does not take, and
  the default student ran 1.7x slower at batch 1 with them on the portable kernels.
- Shapes with the dynamic batch: XNNPACK takes a reshape whose size is one inferred (-1) dimension and the rest
  constant, not one whose size names the batch symbol, and has no no-op expand or squeeze; _xnnpack_shapes
  rewrites those (the same values), so they stay inside the partitions: the default student lowers into 14
  XNNPACK partitions instead of 43 (XNNPACK's preprocess runs once per partition), 15% faster to lower and 16%
  faster at batch 1 (0.140 vs 0.166 ms, 1 thread, interleaved; ExecuTorch 1.5.1).
- What stays outside XNNPACK on the portable CPU kernels is recorded: LayerNorm (no XNNPACK lowering in this
  ExecuTorch; decomposed into the mean, rsqrt and arithmetic XNNPACK takes, the student's 9 LayerNorms left 6
  partitions but lowered 25% slower and ran no faster, so they stay portable), and slices of the dynamic batch
  (q, k and v split off their projection, the class token).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from backends import artifact_bytes
from backends.base import ExportJob, require
from pipeline.core.errors import UserError, root_cause
from pipeline.core.logs import quiet
from pipeline.core.numerics import floating

log = logging.getLogger(__name__)

FILE = "model.pte"


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

    class Partitioner(XnnpackPartitioner):
        """XNNPACK's, except that where every node of the ops it keeps from decomposition passes its own check,
        it says so up front: to_edge_transform_and_lower then decomposes the program twice instead of three times
        (its per-node check path decomposes once more, to undo the ops that fail). The same program comes out
        (the default student's fp32 and INT8 .pte byte for byte), 1-3 s sooner. Decided once, on the ATen program
        of the first call: the later calls see edge ops, and answering those without the check made ExecuTorch
        require every kept op delegated (MobileViT's bilinear upsampling of a dynamic batch is not)."""

        skip_check: bool | None = None

        def ops_to_not_decompose(self, ep):
            ops, check = super().ops_to_not_decompose(ep)
            if self.skip_check is None:
                self.skip_check = all(check(n) for n in ep.graph.nodes if n.op == "call_function" and n.target in ops)
            return (ops, None) if self.skip_check else (ops, check)

    name = exported.graph_signature.user_inputs[0]
    configs = [c for c in ALL_PARTITIONER_CONFIGS if not (int8 and c is ConstantPadConfig)]
    with _xnnpack_passes_with_work(), _unverified():
        edge = to_edge_transform_and_lower(exported, transform_passes=[_batch_still_dynamic(name), _xnnpack_shapes],
                                           partitioner=[Partitioner(configs=configs)])
    program = edge.exported_program()
    program.validate()  # the verifiers once, on the program written (_unverified)
    record = delegation(program.graph_module)
    _widen_batch(program, name, max_batch)
    Path(path).write_bytes(edge.to_executorch().buffer)
    return record


# XNNPACK's preprocess runs its 17 graph passes on every partition, and each pass but two retraces the partition
# (an ExportPass: every node through fake tensors, then a new ExportedProgram) whether or not it found anything to
# rewrite. What each of these needs in the partition before it rewrites anything (ExecuTorch 1.5.1's passes, read
# from their code): an op of these names (`any`), or all of them (`all`: the ops common to both attention patterns
# ConvertToSDPAPass matches); a node carrying `custom` metadata (PropagateCustomMetaPass). The passes not named
# here always run.
_PASS_NEEDS = {
    "DimOrderOpsRevertPass": ("any", ("dim_order_ops._clone_dim_order.default",
                                      "dim_order_ops._to_dim_order_copy.default")),
    # its patterns are the lone op, which it then leaves as it is ("Op was not decomposed, do nothing")
    "ConvertToUpsampleBilinear2d": ("any", ("aten.upsample_bilinear2d.vec",)),
    "ConvertToSDPAPass": ("all", ("aten.bmm.default", "aten._softmax.default", "aten.where.self", "aten.any.dim",
                                  "aten.logical_not.default", "aten.eq.Scalar", "aten.full_like.default")),
    "FuseBatchNormPass": ("any", ("aten.native_batch_norm.default",
                                  "aten._native_batch_norm_legit_no_training.default")),
    "DecomposeBatchNorm": ("any", ("aten.native_batch_norm.default",
                                   "aten._native_batch_norm_legit_no_training.default")),
    "FuseActivationPass": ("any", ("aten.relu.default", "aten.hardtanh.default")),
    "DecomposeConcatenate": ("any", ("aten.cat.default",)),
    "RemoveGetItemPass": ("any", ("aten.max_pool2d_with_indices.default", "aten.max.dim")),
    "Conv1dUnsqueezePass": ("any", ("aten.convolution.default",)),
    "PReLUReshapePass": ("any", ("aten._prelu_kernel.default",)),
    "RemoveRedundantCopyPass": ("any", ("aten._to_copy.default",)),
}


def _idle(xnnpack_pass, graph_module) -> bool:
    """True where `xnnpack_pass` has nothing to rewrite in the partition (_PASS_NEEDS)."""
    name = xnnpack_pass.__name__
    if name == "PropagateCustomMetaPass":
        return not any("custom" in n.meta for gm in graph_module.modules() if hasattr(gm, "graph")
                       for n in gm.graph.nodes)
    if name not in _PASS_NEEDS:
        return False
    ops = {getattr(n.target, "__name__", "") for gm in graph_module.modules() if hasattr(gm, "graph")
           for n in gm.graph.nodes if n.op == "call_function"}
    how, needs = _PASS_NEEDS[name]
    return not (all if how == "all" else any)(op in ops for op in needs)


@contextlib.contextmanager
def _xnnpack_passes_with_work() -> Iterator[None]:
    """While inside, XNNPACK's preprocess runs on each partition only the passes that have something to rewrite
    there (_PASS_NEEDS), each judged on the partition as the passes before it left it: the same programs come out
    (the default student's fp32 and INT8 .pte byte for byte; tests/test_executorch.py). On the default student
    the passes of its two lowerings (fp32, INT8; 14 partitions each) took 2.5 CPU seconds instead of 13.3: 163
    of 238 pass runs skipped, and the attention and upsampling pattern graphs (2.8 s to build, once per process)
    never built (ExecuTorch 1.5.1)."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    transform = XNNPACKPassManager.transform

    def with_work(self):
        passes = self.passes
        try:
            for xnnpack_pass in passes:
                if not _idle(xnnpack_pass, self._exported_program.graph_module):
                    self.passes = [xnnpack_pass]
                    self._exported_program = transform(self)
        finally:
            self.passes = passes
        return self._exported_program

    XNNPACKPassManager.transform = with_work
    try:
        yield
    finally:
        XNNPACKPassManager.transform = transform


@contextlib.contextmanager
def _unverified() -> Iterator[None]:
    """While inside, a new ExportedProgram skips its verifiers: a lowering builds about 190 intermediate programs
    (one per graph pass, and per pass on each XNNPACK partition), and checking every one took 13% of the default
    student's INT8 lowering (18.0 and 18.9 s -> 15.7 and 16.4 s, interleaved, one thread; the same .pte byte for
    byte). _lower runs the verifiers on the final edge program, and to_executorch checks its own."""
    from torch.export.exported_program import ExportedProgram

    validate = ExportedProgram.validate
    ExportedProgram.validate = lambda self: None
    try:
        yield
    finally:
        ExportedProgram.validate = validate


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


def _xnnpack_shapes(graph_module):
    """A transform pass (before partitioning): reshapes, squeezes and unsqueezes whose output has at most one
    dynamic dimension become one reshape with that dimension inferred (-1), and expands to their input's own shape
    go (module docstring)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    edge = exir_ops.edge.aten
    reshapes = (edge.view_copy.default, edge.squeeze_copy.default, edge.squeeze_copy.dim, edge.squeeze_copy.dims,
                edge.unsqueeze_copy.default)
    graph, changed = graph_module.graph, False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (*reshapes, edge.expand_copy.default):
            continue
        source, shape = node.args[0], list(node.meta["val"].shape)
        if node.target == edge.expand_copy.default:
            if list(source.meta["val"].shape) != shape:
                continue
            node.replace_all_uses_with(source)
        else:
            size = [d if isinstance(d, int) else -1 for d in shape]
            if size.count(-1) > 1 or (node.target == edge.view_copy.default and list(node.args[1]) == size):
                continue
            with graph.inserting_before(node):
                reshape = graph.call_function(edge.view_copy.default, (source, size))
            reshape.meta = node.meta
            node.replace_all_uses_with(reshape)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.eliminate_dead_code()
        graph_module.recompile()
    return PassResult(graph_module, changed)


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
    require("executorch", "executorch")
    with quiet():
        try:
            record, planned = _capture_and_lower(_unfused(model), shape, path, max_batch)
        except Exception as exc:  # torch.export and the edge passes raise many types; the innermost names the op
            raise _failed("export", name, exc) from None
    _one_image_at_a_time(name, max_batch, planned)
    record.pop("int8_ops")
    return {**record, "max_batch": planned}


def run(job: ExportJob) -> dict[str, dict]:
    """model.pte, fp32, lowered to XNNPACK (when export.executorch.enabled)."""
    cfg = job.cfg.executorch
    if not cfg.enabled:
        return {}
    start = time.perf_counter()
    lowered = export(job.model, job.shape, job.out / FILE, cfg.max_batch, job.model_name)
    return {"executorch": {"file": FILE, "runtime": "executorch", "precision": "fp32", "numerics": floating("fp32"),
                           "bytes": artifact_bytes(job.out / FILE), **lowered,
                           "seconds": round(time.perf_counter() - start, 2)}}
