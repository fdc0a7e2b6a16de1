"""The training loop shared by the teacher and distill stages: AdamW, warm-up + cosine schedule,
bf16 autocast on CUDA, per-epoch validation, metrics.jsonl, and an atomic checkpoint every epoch
from which an interrupted run resumes bit-for-bit (model, optimiser, schedule, RNG, epoch)."""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay

from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.fileio import atomic_write, write_text
from pipeline.progress import Progress
from stages.batches import Batches

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"

# step(x, y, rng) -> (loss to minimise, {term name: value for the logs})
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]


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
    """Top-k accuracy in percent over a whole split (eval mode)."""
    was_training = model.training
    model.eval()
    hits = dict.fromkeys(topk, 0)
    for x, y in data.iterate(batch_size, device):
        with _autocast(device):
            top = model(x).topk(max(topk), dim=1).indices
        for k in topk:
            hits[k] += (top[:, :k] == y[:, None]).any(dim=1).sum().item()
    model.train(was_training)
    return {k: 100.0 * v / len(data) for k, v in hits.items()}


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def fit(model: nn.Module, step: StepFn, train: Batches, val: Batches, cfg: TrainConfig, shift: int,
        flip: bool, workdir: Path, device: str, seed: int, progress: Progress, label: str) -> list[dict]:
    """Train `model` for cfg.epochs with `step`, resuming from workdir/checkpoint.pt when present.

    Returns one metrics row per epoch (also written to workdir/metrics.jsonl).
    """
    steps_per_epoch = train.num_batches(cfg.batch_size)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr / cfg.lr))
    rng = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    start_epoch = 0
    checkpoint = workdir / CHECKPOINT
    state = _resume_state(checkpoint, progress, label)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        rows, start_epoch = state["rows"], state["epoch"]
        progress.log(f"  {label}: resuming after epoch {start_epoch}/{cfg.epochs} from {checkpoint}")
    model.to(device)
    with progress.bar(f"  {label} epochs", cfg.epochs) as epochs_bar:
        epochs_bar.advance(start_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            try:
                row = _train_epoch(model, step, train, cfg, shift, flip, optimizer, schedule, rng, device,
                                   progress, f"  {label} epoch {epoch + 1}/{cfg.epochs}")
            except torch.OutOfMemoryError:
                raise UserError(f"{label}: out of {device} memory at batch_size {cfg.batch_size}: set "
                                f"{label}.batch_size = {max(cfg.batch_size // 2, 1)} (and the lr about half), "
                                f"or run.device = 'cpu'; the run resumes from epoch {epoch}") from None
            row = {"epoch": epoch + 1, **row, "val_top1": round(accuracy(model, val, device)[1], 3)}
            rows.append(row)
            progress.log(f"  {label} epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, "
                         f"val top-1 {row['val_top1']:.2f}%, {row['images_per_s']:.0f} img/s")
            write_text(workdir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "rng": rng.get_state(),
                     "torch_rng": torch.get_rng_state(), "rows": rows, "epoch": epoch + 1}
            atomic_write(checkpoint, lambda tmp, s=state: torch.save(s, tmp))
            epochs_bar.advance()
    return rows


def _resume_state(checkpoint: Path, progress: Progress, label: str) -> dict | None:
    """The saved training state, or None (none yet, or a damaged file: then training starts over)."""
    if not checkpoint.is_file():
        return None
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or edited by hand: never resume from it
        progress.log(f"[yellow]  {label}: {checkpoint} is damaged ({type(exc).__name__}); starting over[/]")
        checkpoint.unlink()
        return None


def _train_epoch(model, step, train, cfg, shift, flip, optimizer, schedule, rng, device, progress, title):
    model.train()
    sums: dict[str, float] = {}
    seen, start, nonfinite = 0, time.perf_counter(), 0
    with progress.bar(title, train.num_batches(cfg.batch_size)) as bar:
        for index, (x, y) in enumerate(train.iterate(cfg.batch_size, device, generator=rng, shift=shift, flip=flip)):
            with _autocast(device):
                loss, terms = step(x, y, rng)
            if not torch.isfinite(loss):
                nonfinite = _skip_nonfinite(loss, terms, nonfinite + 1, index, cfg, schedule, progress, title)
                continue
            nonfinite = 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(y)
            seen += len(y)
            bar.advance(info=f"loss {loss.item():.3f}  {seen / (time.perf_counter() - start):.0f} img/s")
    elapsed = time.perf_counter() - start
    if not seen:
        raise UserError(f"{title.strip()}: every step had a non-finite loss; lower lr or set grad_clip")
    row = {name: round(total / seen, 6) for name, total in sums.items()}
    return {**row, "lr": schedule.get_last_lr()[0], "images_per_s": round(seen / elapsed, 1),
            "seconds": round(elapsed, 2)}


def _skip_nonfinite(loss, terms, count, index, cfg, schedule, progress, title) -> int:
    """A NaN/inf loss: skip the step (no update), warn, and stop after cfg.max_nonfinite_steps in a row."""
    values = ", ".join(f"{name} {value.item():.4g}" for name, value in {"loss": loss, **terms}.items())
    where = f"{title.strip()}, step {index + 1}, lr {schedule.get_last_lr()[0]:.2e}"
    if count >= cfg.max_nonfinite_steps:
        raise UserError(f"{where}: the loss was non-finite for {count} steps in a row ({values}); lower lr, "
                        "set grad_clip, or check the loss weights and temperature")
    progress.log(f"[yellow]{where}: non-finite loss ({values}); step skipped[/]")
    return count
