"""The MIL ops of a Core ML ML program as torch functions: `OPS`, op type -> fn(inputs, shapes), with the
semantics and defaults that coremltools' op definitions (coremltools/converters/mil/mil/ops/defs) state.
backends/coreml/program.py runs a package's program through them; arithmetic is float32 torch kernels (the
program rounds fp16-typed outputs after each op)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

OPS: dict[str, Callable] = {}


def op(*names: str):
    """Register a torch implementation: fn(inputs, shapes) -> tensor or tuple of tensors, where inputs
    maps the op's input names to values and shapes are the program's static output shapes."""
    def register(fn):
        OPS.update(dict.fromkeys(names, fn))
        return fn
    return register


def _ints(v) -> list[int]:
    return [int(i) for i in v]


# Elementwise (numpy broadcasting, as MIL).
BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.div, "pow": torch.pow,
          "maximum": torch.maximum, "minimum": torch.minimum,
          "floor_div": lambda x, y: torch.div(x, y, rounding_mode="floor")}
UNARY = {"relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu, "tanh": torch.tanh, "exp": torch.exp,
         "sqrt": torch.sqrt, "abs": torch.abs, "erf": torch.erf, "square": torch.square, "floor": torch.floor,
         "ceil": torch.ceil, "round": torch.round, "sign": torch.sign, "sin": torch.sin, "cos": torch.cos,
         "softsign": F.softsign, "relu6": lambda x: x.clamp(0, 6),
         "softplus": lambda x: torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)}


def _tensor(v) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float32)


for _name, _fn in BINARY.items():
    op(_name)(lambda v, shapes, fn=_fn: fn(_tensor(v["x"]), _tensor(v["y"])))
for _name, _fn in UNARY.items():
    op(_name)(lambda v, shapes, fn=_fn: fn(v["x"]))


@op("rsqrt")
def _rsqrt(v, shapes):
    return torch.rsqrt(v["x"] + v["epsilon"])


@op("inverse")
def _inverse(v, shapes):
    return torch.reciprocal(v["x"] + v["epsilon"])


@op("log")
def _log(v, shapes):
    return torch.log(v["x"] + v["epsilon"])


@op("clip")
def _clip(v, shapes):
    return torch.minimum(torch.maximum(v["x"], _tensor(v["alpha"])), _tensor(v["beta"]))


# Activations with parameters: iOS15/activation.py.
@op("sigmoid_hard")
def _sigmoid_hard(v, shapes):
    return (v["alpha"] * v["x"] + v["beta"]).clamp(0, 1)


@op("thresholded_relu")
def _thresholded_relu(v, shapes):
    return torch.where(v["x"] >= v["alpha"], v["x"], 0.0)


@op("leaky_relu")
def _leaky_relu(v, shapes):
    return torch.where(v["x"] < 0, v["x"] * v["alpha"], v["x"])


@op("elu")
def _elu(v, shapes):
    return torch.where(v["x"] < 0, v["alpha"] * torch.expm1(v["x"]), v["x"])


@op("gelu")
def _gelu(v, shapes):
    x, mode = v["x"], v["mode"]
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none")


@op("softmax")
def _softmax(v, shapes):
    return torch.softmax(v["x"], int(v["axis"]))


# Linear algebra and normalisation.
@op("linear")
def _linear(v, shapes):
    return F.linear(v["x"], v["weight"], v["bias"])


@op("matmul")
def _matmul(v, shapes):
    x, y = _tensor(v["x"]), _tensor(v["y"])
    x = x.transpose(-1, -2) if v["transpose_x"] else x
    y = y.transpose(-1, -2) if v["transpose_y"] else y
    return torch.matmul(x, y)


@op("scaled_dot_product_attention")
def _attention(v, shapes):
    """iOS18: softmax(Q K^T / sqrt(E) + mask) V; a bool mask marks the keys that take part (as torch's)."""
    return F.scaled_dot_product_attention(v["query"], v["key"], v["value"], attn_mask=v.get("attn_mask"))


@op("layer_norm")
def _layer_norm(v, shapes):
    """Normalise over `axes` (default: all), gamma/beta shaped x.shape[axes]: move them last for F.layer_norm."""
    x = v["x"]
    axes = sorted(a % x.dim() for a in (_ints(v["axes"]) if v["axes"] is not None else range(x.dim())))
    last = list(range(x.dim() - len(axes), x.dim()))
    y = x.movedim(axes, last)
    shape = y.shape[-len(axes):]
    gamma = None if v["gamma"] is None else v["gamma"].reshape(shape)
    beta = None if v["beta"] is None else v["beta"].reshape(shape)
    return F.layer_norm(y, shape, gamma, beta, float(v["epsilon"])).movedim(last, axes)


@op("batch_norm")
def _batch_norm(v, shapes):
    return F.batch_norm(v["x"], v["mean"], v["variance"], v["gamma"], v["beta"], training=False,
                        eps=float(v["epsilon"]))


def _reducer(fn):
    def reduce(v, shapes):
        x = v["x"]
        axes = tuple(_ints(v["axes"])) if v["axes"] is not None else tuple(range(x.dim()))
        return fn(x, dim=axes, keepdim=bool(v["keep_dims"]))
    return reduce


for _name, _fn in {"reduce_mean": torch.mean, "reduce_sum": torch.sum, "reduce_max": torch.amax,
                   "reduce_min": torch.amin}.items():
    OPS[_name] = _reducer(_fn)


# Convolution and pooling: iOS15/conv.py, pool.py, and aggregated_pad in defs/_utils.py.
def _pads(v, x: torch.Tensor, kernel: list[int], dilations: list[int]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim for pad_type valid / custom / same / same_lower."""
    kind = str(v["pad_type"]).lower()
    if kind == "valid":
        return [(0, 0)] * len(kernel)
    if kind == "custom":
        pad = _ints(v["pad"])
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(kernel))]
    pads = []
    for size, k, s, d in zip(x.shape[2:], kernel, _ints(v["strides"]), dilations):
        total = max(0, s * math.ceil(size / s) - size + (k - 1) * d + 1 - s)
        small, large = total // 2, total - total // 2
        pads.append((large, small) if kind == "same_lower" else (small, large))
    return pads


def _torch_pad(pads: list[tuple[int, int]]) -> list[int]:
    """F.pad's order: last dimension first."""
    return [p for pair in reversed(pads) for p in pair]


@op("conv")
def _conv(v, shapes):
    x, weight = v["x"], v["weight"]
    dims = x.dim() - 2
    dilations = _ints(v["dilations"])
    pads = _pads(v, x, list(weight.shape[2:]), dilations)
    symmetric = all(a == b for a, b in pads)
    if not symmetric:
        x = F.pad(x, _torch_pad(pads))
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return conv(x, weight, v["bias"], stride=_ints(v["strides"]),
                padding=[a for a, _ in pads] if symmetric else 0, dilation=dilations, groups=int(v["groups"]))


def _pool(v, average: bool):
    """Pads explicitly (-inf for max, 0 for average; an average that excludes padding divides by the
    count of real pixels), except with ceil_mode, where coremltools requires symmetric padding."""
    x, kernel, strides = v["x"], _ints(v["kernel_sizes"]), _ints(v["strides"])
    dims = x.dim() - 2
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1] if average else \
        (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    pads = _pads(v, x, kernel, [1] * dims)
    if v["ceil_mode"]:
        extra = {"count_include_pad": not v["exclude_padding_from_average"]} if average else {}
        return pool(x, kernel, strides, [a for a, _ in pads], ceil_mode=True, **extra)
    out = pool(F.pad(x, _torch_pad(pads), value=0.0 if average else -math.inf), kernel, strides)
    if average and v["exclude_padding_from_average"]:
        out = out / pool(F.pad(torch.ones_like(x), _torch_pad(pads)), kernel, strides)
    return out


op("max_pool")(lambda v, shapes: _pool(v, average=False))
op("avg_pool")(lambda v, shapes: _pool(v, average=True))


# Resizing: iOS15/iOS16 image_resizing.py. The output size is the program's own (MIL recomputes the scale
# factor from it); sample positions follow the op docs' grid formulas, one spatial axis at a time.
def _positions(size_in: int, size_out: int, align_corners: bool, half_pixel: bool) -> torch.Tensor:
    i = torch.arange(size_out, dtype=torch.float32)
    if align_corners:
        pos = i * ((size_in - 1) / (size_out - 1)) if size_out > 1 else torch.zeros_like(i)
    else:
        pos = (i + 0.5) * (size_in / size_out) - 0.5 if half_pixel else i * (size_in / size_out)
    return pos.clamp(0, size_in - 1)


def _linear(x: torch.Tensor, axis: int, size_out: int, align_corners: bool, half_pixel: bool) -> torch.Tensor:
    pos = _positions(x.shape[axis], size_out, align_corners, half_pixel)
    low = pos.floor().long()
    high = (low + 1).clamp(max=x.shape[axis] - 1)
    weight = (pos - low).view(-1, *[1] * (-axis - 1))
    return x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight


@op("upsample_bilinear")
def _upsample_bilinear(v, shapes):
    align = bool(v["align_corners"])
    half = v.get("half_pixel_centers")
    half = not align if half is None else bool(half)
    x = _linear(v["x"], -2, shapes[0][-2], align, half)
    return _linear(x, -1, shapes[0][-1], align, half)


@op("upsample_nearest_neighbor")
def _upsample_nearest(v, shapes):
    x = v["x"]
    for axis in (-2, -1):
        size_in, size_out = x.shape[axis], shapes[0][axis]
        index = (torch.arange(size_out) * size_in // size_out).clamp(max=size_in - 1)
        x = x.index_select(axis, index)
    return x


# Shapes and indexing: iOS15-17 tensor_transformation.py, tensor_operation.py, scatter_gather.py.
@op("reshape", "squeeze", "expand_dims", "reshape_like", "flatten2d")
def _reshape(v, shapes):
    """The program's own output shape: its type inference resolved 0, -1 and the axes already."""
    return v["x"].reshape(shapes[0])


@op("transpose")
def _transpose(v, shapes):
    return v["x"].permute(_ints(v["perm"]))


@op("concat")
def _concat(v, shapes):
    values = [_tensor(t) for t in v["values"]]
    axis = int(v["axis"]) % values[0].dim()
    if v["interleave"]:
        return torch.stack(values, axis + 1).reshape(shapes[0])
    return torch.cat(values, axis)


@op("split")
def _split(v, shapes):
    axis = int(v["axis"])
    return torch.split(v["x"], [s[axis] for s in shapes], dim=axis)


@op("slice_by_index")
def _slice_by_index(v, shapes):
    from coremltools.converters.mil.mil.ops.defs._utils import solve_slice_by_index_slice

    x = v["x"]
    rank = x.dim()
    masks = {name: None if v[name] is None else [bool(m) for m in v[name]]
             for name in ("begin_mask", "end_mask", "squeeze_mask")}
    stride = _ints(v["stride"]) if v["stride"] is not None else [1] * rank
    slices = solve_slice_by_index_slice(x.shape, _ints(v["begin"]), _ints(v["end"]), stride, **masks)
    for dim, part in enumerate(slices):
        picked = range(x.shape[dim])[part]
        if picked.step > 0:
            x = x.narrow(dim, picked.start, len(picked)) if picked.step == 1 else \
                x[(slice(None),) * dim + (slice(picked.start, picked.stop, picked.step),)]
        else:
            x = x.index_select(dim, torch.tensor(list(picked), dtype=torch.long))
    return x.reshape(shapes[0])


@op("slice_by_size")
def _slice_by_size(v, shapes):
    x = v["x"]
    for dim, (begin, size) in enumerate(zip(_ints(v["begin"]), _ints(v["size"]))):
        begin %= x.shape[dim]
        x = x.narrow(dim, begin, x.shape[dim] - begin if size < 0 else size)
    return x


@op("gather")
def _gather(v, shapes):
    x, indices, axis = v["x"], v["indices"], int(v["axis"]) % v["x"].dim()
    if int(v.get("batch_dims") or 0):
        raise NotImplementedError("gather with batch_dims > 0")
    indices = torch.as_tensor(indices).long() % x.shape[axis]
    return x.index_select(axis, indices.reshape(-1)).reshape(shapes[0])


@op("tile")
def _tile(v, shapes):
    return v["x"].repeat(_ints(v["reps"]))


@op("pad")
def _pad(v, shapes):
    pad = _ints(v["pad"])
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    mode = str(v["mode"])
    if mode == "constant":
        return F.pad(v["x"], _torch_pad(pairs), value=float(v["constant_val"]))
    return F.pad(v["x"], _torch_pad(pairs), mode=mode)


CAST = {"fp16": torch.float32, "fp32": torch.float32, "int32": torch.int32, "bool": torch.bool}


@op("cast")
def _cast(v, shapes):
    """fp16 is held as float32 and rounded after the op, like every fp16 output."""
    return v["x"].to(CAST[str(v["dtype"])])
