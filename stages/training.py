"""The training loop shared by the teacher and distill stages: AdamW, warm-up + cosine schedule,
bf16 autocast on CUDA, per-epoch validation, metrics.jsonl, and an atomic checkpoint every epoch
from which an interrupted run resumes bit-for-bit (model, optimiser, schedule, RNG, epoch)."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from torch.nn.parallel import DistributedDataParallel

from pipeline.core.distributed import World, all_sum, gather, joined
from pipeline.core.errors import UserError
from pipeline.core.fileio import atomic_write, write_text
from pipeline.core.progress import Progress
from pipeline.core.stage import Accel
from stages.batches import Batches
from stages.checkpoints import CHECKPOINT, METRICS, read
from stages.recipe import TrainConfig

log = logging.getLogger(__name__)

# step(forward, x, y, sampling) -> (loss to minimise, {term name: value for the logs}); `forward` is the model to
# call (DDP-wrapped or compiled as the run asks), so gradients are synchronised across processes; `sampling`
# is the generator for the loss's own random draws.
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator],
                  tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Streams:
    """Independent random streams of a training run, the same on every rank: two runs with one seed see the
    same images in the same order with the same augmentation, whatever their losses draw."""

    order: torch.Generator
    augmentation: torch.Generator
    sampling: torch.Generator  # the loss's own draws (the manifold loss's random token sample)

    @classmethod
    def from_seed(cls, seed: int) -> Streams:
        seeds = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
        return cls(*(torch.Generator().manual_seed(int(s)) for s in seeds))

    def state(self) -> dict[str, torch.Tensor]:
        return {name: generator.get_state() for name, generator in vars(self).items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        for name, generator in vars(self).items():
            generator.set_state(state[name])


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to `floor`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def accuracy(model: nn.Module, data: Batches, device: str, batch_size: int = 512, topk: tuple[int, ...] = (1,)
             ) -> dict[int, float]:
    """Top-k accuracy in percent over a whole split (eval mode); each rank of a multi-process run
    scores its share and the hits are summed. A k past the number of classes takes them all (top-5 of a
    2-class model is 100%)."""
    was_training = model.training
    model.eval()
    hits = torch.zeros(len(topk), dtype=torch.float64, device=device)
    here = joined()
    for x, y in data.iterate(batch_size, device, shard=(here.rank, here.size)):
        with _autocast(device):
            logits = model(x)
            top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
        for i, k in enumerate(topk):
            hits[i] += (top[:, :k] == y[:, None]).any(dim=1).sum()
    model.train(was_training)
    return {k: 100.0 * v / len(data) for k, v in zip(topk, all_sum(hits).tolist())}


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def check_batch_split(label: str, batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise UserError(f"{label}.batch_size = {batch_size} (the global batch) does not split over "
                        f"{processes} processes: use a multiple of {processes}")


def fit(model: nn.Module, step: StepFn, train: Batches, val: Batches, cfg: TrainConfig, shift: int,
        flip: bool, workdir: Path, device: str, seed: int, progress: Progress, label: str,
        accel: Accel = Accel()) -> list[dict]:
    """Train `model` for cfg.epochs with `step`, resuming from workdir/checkpoint.pt when present.

    In a multi-process run (torchrun) each rank trains on its share of every global batch of
    cfg.batch_size under DDP; rank 0 writes the checkpoint and metrics. Returns one metrics row per
    epoch (also written to workdir/metrics.jsonl).
    """
    here = joined()
    check_batch_split(label, cfg.batch_size, here.size)
    steps_per_epoch = train.num_batches(cfg.batch_size)
    lr = cfg.lr * cfg.batch_size / 512 if cfg.lr_scaling == "linear" else cfg.lr
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=lr, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr / cfg.lr))
    streams = Streams.from_seed(seed)
    rows: list[dict] = []
    start_epoch = 0
    checkpoint = workdir / CHECKPOINT
    state = _resume_state(checkpoint, label, here,
                          lambda s: _misfit(s, model, optimizer, schedule, streams, here, cfg.epochs))
    if state:  # checked whole first: nothing is applied from a checkpoint that does not fit
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        streams.restore(state["rng"])
        torch.set_rng_state(state["torch_rng"][here.rank])
        rows, start_epoch = state["rows"], state["epoch"]
        log.info(f"{label}: resuming after epoch {start_epoch}/{cfg.epochs} from {checkpoint}")
    if cfg.lr_scaling == "linear":
        log.info(f"{label}: lr {cfg.lr:g} x {cfg.batch_size}/512 = {lr:.3g} (linear scaling)")
    forward = _prepare(model, device, here, accel)
    state_like_params(optimizer)
    with progress.bar(f"  {label} epochs", cfg.epochs, unit="epoch") as epochs_bar:
        epochs_bar.advance(start_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            try:
                row = _train_epoch(model, forward, step, train, cfg, shift, flip, optimizer, schedule, streams,
                                   device, here, progress, f"  {label} epoch {epoch + 1}/{cfg.epochs}")
            except torch.OutOfMemoryError:
                raise UserError(f"{label}: out of {device} memory at batch_size {cfg.batch_size}: set "
                                f"{label}.batch_size = {max(cfg.batch_size // 2, 1)} (and the lr about half), "
                                f"or run.device = 'cpu'; the run resumes from epoch {epoch}") from None
            row = {"epoch": epoch + 1, **row, "val_top1": round(accuracy(model, val, device)[1], 3)}
            rows.append(row)
            log.info(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, "
                     f"val top-1 {row['val_top1']:.2f}%, {row['images_per_s']:.0f} img/s"
                     + (f", {row['gpu_memory_gb']:.2f} GB GPU" if "gpu_memory_gb" in row else ""))
            torch_rng = gather(torch.get_rng_state())  # dropout draws differ by rank: keep each rank's
            if here.main:
                write_text(workdir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "schedule": schedule.state_dict(), "rng": streams.state(), "torch_rng": torch_rng,
                         "rows": rows, "epoch": epoch + 1, "world_size": here.size}
                atomic_write(checkpoint, lambda tmp, s=state: torch.save(s, tmp))
            epochs_bar.advance()
    if here.size > 1:
        _check_in_sync(model, here, label)
    return rows


MATH_ATTENTION_TOKENS = 100  # CPU: at 50 tokens the plain matmul-softmax path trains 9-11% faster than fused
# SDPA (flash kernel), at 197 tokens 3% slower (bench/train_throughput.py, 2-core AMD EPYC)


def attention_path(model: nn.Module, device: str) -> None:
    """Pick timm's attention kernel: on CPU with few tokens the unfused path (same maths); otherwise fused
    scaled_dot_product_attention."""
    embed = getattr(model, "patch_embed", None)
    tokens = getattr(embed, "num_patches", None)
    math = device == "cpu" and tokens is not None and tokens <= MATH_ATTENTION_TOKENS
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = not math


def channels_last_is_safe(model: nn.Module, device: str) -> bool:
    """False for the one layout oneDNN's AVX2 kernels get wrong on CPU: a 1-channel, stride-2 1x1 convolution
    in channels-last (its weight-gradient kernel writes outside its buffer; docs/models.md)."""
    return device != "cpu" or not any(
        isinstance(m, nn.Conv2d) and m.in_channels == 1 and m.kernel_size == (1, 1) and m.stride != (1, 1)
        for m in model.modules())


def place(model: nn.Module, device: str, accel: Accel) -> nn.Module:
    """Move a model to the device in the layout and attention path it runs fastest in there (in place)."""
    attention_path(model, device)
    if accel.channels_last and channels_last_is_safe(model, device):
        model.to(memory_format=torch.channels_last)
    elif accel.channels_last:
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        log.info(f"{name} runs in NCHW on CPU, not channels-last: it has a 1-channel stride-2 1x1 "
                 "convolution, whose oneDNN AVX2 kernel is unsafe in that layout")
    return model.to(device)


def _prepare(model: nn.Module, device: str, here: World, accel: Accel) -> nn.Module:
    """The module the step calls: placed on the device, DDP-wrapped across ranks, compiled when asked."""
    forward = place(model, device, accel)
    if here.size > 1:
        if device == "cuda":
            forward = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place for a model without top BN
        # 1x1 conv weights (C x C' x 1 x 1) make DDP warn about strides that only differ on size-1 dims
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        forward = DistributedDataParallel(forward, device_ids=[here.local_rank] if device == "cuda" else None)
    return torch.compile(forward) if accel.compile else forward


def state_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Give resumed optimizer state its parameter's memory layout: fused AdamW pairs elements by position, so
    moments saved channels-first and resumed into channels-last weights (run.channels_last toggled between
    the interruption and the rerun) would update the wrong elements, silently."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param).copy_(value)


def _check_in_sync(model: nn.Module, here: World, label: str) -> None:
    """DDP keeps every rank's weights identical; prove it at the end (a hash of every parameter; buffers
    such as BatchNorm's running statistics are rank 0's, as DDP broadcasts them before each forward)."""
    digest = hashlib.sha256()
    for tensor in model.parameters():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    hashes = gather(digest.hexdigest())
    if len(set(hashes)) != 1:
        raise RuntimeError(f"{label}: the ranks' weights differ after training ({hashes})")
    log.info(f"{label}: weights identical on all {here.size} processes")


def _resume_state(checkpoint: Path, label: str, here: World,
                  misfit: Callable[[dict], str | None] = lambda state: None) -> dict | None:
    """The saved training state, or None (none yet, or a damaged file: then training starts over).
    Every rank reads the same file; a checkpoint from another number of processes is not resumed. The file is
    untrusted (anyone who can write the cache can replace it): it is loaded weights-only (stages/checkpoints.py),
    and one that does not load so, lacks a key, or whose state `misfit` finds does not fit this run, is damaged."""
    state, why = None, None
    if checkpoint.is_file():
        state, why = read(checkpoint)
        if state is not None and state["world_size"] != here.size:
            state, why = None, f"was written by {state['world_size']} processes, not {here.size}"
        elif state is not None:
            problem = misfit(state)
            if problem:
                state, why = None, f"is damaged ({problem})"
    if not all(gather(state is not None)):  # all ranks resume, or none
        state = None
    if why and here.main:
        log.warning(f"{label}: {checkpoint} {why}; starting over")
        checkpoint.unlink(missing_ok=True)
    return state


def _misfit(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, streams: Streams,
            here: World, epochs: int) -> str | None:
    """Why a checkpoint's training state (keys and types checked by stages/checkpoints.py) does not fit this
    model, optimiser, schedule and run, or None: checked before any of it is applied, so a bad one leaves
    nothing half-loaded (load_state_dict copies tensor by tensor and fails only at the first misfit)."""
    params = model.state_dict()
    saved = state["model"]
    if saved.keys() != params.keys():
        odd = sorted(saved.keys() ^ params.keys())
        return f"its model has other tensors ({', '.join(map(str, odd[:3]))}{', ...' if len(odd) > 3 else ''})"
    for name, tensor in params.items():
        if not torch.is_tensor(saved[name]) or saved[name].shape != tensor.shape:
            return f"its model's {name} does not fit the model"
    why = _optimizer_misfit(state["optimizer"], optimizer)
    if why:
        return why
    current = schedule.state_dict()
    if state["schedule"].keys() != current.keys() or any(
            _kind(state["schedule"][k]) != _kind(v) for k, v in current.items()):
        return "its schedule state is not this schedule's"
    generators = streams.state()
    if state["rng"].keys() != generators.keys() or any(
            not _byte_state(state["rng"][k], v) for k, v in generators.items()):
        return "its random streams are not this run's"
    torch_rng = state["torch_rng"]
    if len(torch_rng) != here.size or not all(_byte_state(t, torch.get_rng_state()) for t in torch_rng):
        return "its torch RNG states do not fit"
    if not 1 <= state["epoch"] <= epochs or len(state["rows"]) != state["epoch"]:
        return f"epoch {state['epoch']} with {len(state['rows'])} metric rows, of {epochs} epochs"
    return None


def _optimizer_misfit(saved: dict, optimizer: torch.optim.Optimizer) -> str | None:
    """Why a saved optimiser state does not fit `optimizer` (its groups, their settings, each parameter's
    moments), or None."""
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict) or len(groups) != len(optimizer.param_groups):
        return "its optimiser state is not this optimiser's"
    ids: dict = {}
    for group, current in zip(groups, optimizer.param_groups):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) or \
                len(group["params"]) != len(current["params"]) or \
                not all(isinstance(i, int) for i in group["params"]):
            return "its optimiser's parameter groups do not fit the model"
        if any(_kind(group[k]) != _kind(v) for k, v in current.items() if k != "params" and k in group):
            return "its optimiser's settings have the wrong types"
        ids.update(zip(group["params"], current["params"]))
    for index, moments in state.items():
        if index not in ids or not isinstance(moments, dict):
            return "its optimiser state names parameters the model does not have"
        for value in moments.values():
            if not torch.is_tensor(value) or value.dim() and value.shape != ids[index].shape:
                return "its optimiser's moments do not fit the model"
    return None


def _kind(value) -> type:
    """A value's type, with int and float one kind (a saved 0 for a 0.0) and bool and None their own."""
    return float if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value)


def _byte_state(saved, current: torch.Tensor) -> bool:
    """Whether `saved` can stand for the generator state `current` (a uint8 tensor of the same length)."""
    return torch.is_tensor(saved) and saved.dtype == torch.uint8 and saved.shape == current.shape


def _train_epoch(model, forward, step, train, cfg, shift, flip, optimizer, schedule, streams, device, here, progress,
                 title):
    model.train()
    sums: dict[str, torch.Tensor] = {}
    seen, start, nonfinite = 0, time.perf_counter(), 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with progress.bar(title, train.num_batches(cfg.batch_size)) as bar:
        batches = train.iterate(cfg.batch_size, device, order=streams.order, augmentation=streams.augmentation,
                                shift=shift, flip=flip, shard=(here.rank, here.size))
        for index, (x, y) in enumerate(batches):
            with _autocast(device):
                loss, terms = step(forward, x, y, streams.sampling)
            if not _finite_everywhere(loss):  # every rank skips together, or DDP would hang
                nonfinite = _skip_nonfinite(loss, terms, nonfinite + 1, index, cfg, schedule, title)
                continue
            nonfinite = 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() * len(y)
            seen += len(y)
            if index % 10 == 0:  # reading the loss waits for the GPU: not every step
                speed = here.size * seen / (time.perf_counter() - start)
                bar.advance(10 if index else 1, info=f"loss {loss.item():.3f}  {speed:.0f} img/s")
    elapsed = time.perf_counter() - start
    total = all_sum(torch.tensor([float(seen)], dtype=torch.float64)).item()
    if not total:
        raise UserError(f"{title.strip()}: every step had a non-finite loss; lower lr or set grad_clip")
    row = {name: round(all_sum(value.double().cpu().reshape(1)).item() / total, 6) for name, value in sums.items()}
    row.update(lr=schedule.get_last_lr()[0], images_per_s=round(total / elapsed, 1), seconds=round(elapsed, 2))
    if here.size > 1:
        row["processes"] = here.size
    if device == "cuda":
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], dtype=torch.float64)
        row["gpu_memory_gb"] = round(max(gather(peak.item())), 3)
    return row


def _finite_everywhere(loss: torch.Tensor) -> bool:
    finite = torch.isfinite(loss.detach()).to("cpu", torch.float64).reshape(1)
    return all_sum(finite).item() == joined().size


def _skip_nonfinite(loss, terms, count, index, cfg, schedule, title) -> int:
    """A NaN/inf loss: skip the step (no update), warn, and stop after cfg.max_nonfinite_steps in a row."""
    values = ", ".join(f"{name} {value.item():.4g}" for name, value in {"loss": loss, **terms}.items())
    where = f"{title.strip()}, step {index + 1}, lr {schedule.get_last_lr()[0]:.2e}"
    if count >= cfg.max_nonfinite_steps:
        raise UserError(f"{where}: the loss was non-finite for {count} steps in a row ({values}); lower lr, "
                        "set grad_clip, or check the loss weights and temperature")
    log.warning(f"{where}: non-finite loss ({values}); step skipped")
    return count
