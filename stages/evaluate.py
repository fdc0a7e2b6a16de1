"""Evaluate stage: top-1/top-5 of teacher and student on the held-out test split, params, FLOPs, size."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.fileio import write_json
from pipeline.stage import Stage, StageContext
from stages.batches import load_dataset
from stages.models import load_model
from stages.training import accuracy


def flops_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one image (torch.utils.flop_counter counts a multiply-add as 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return int(counter.get_total_flops())


def describe(model_file: Path, data, device: str) -> dict:
    model, record = load_model(model_file)
    shape = tuple(data.test.images.shape[1:])
    flops = flops_per_image(model, shape)
    top = accuracy(model.to(device), data.test, device, topk=(1, 5))
    return {"model": record["model"], "top1": round(top[1], 3), "top5": round(top[5], 3),
            "params": sum(p.numel() for p in model.parameters()), "flops": flops,
            "checkpoint_bytes": model_file.stat().st_size}


class EvaluateStage(Stage):
    name = "evaluate"
    inputs = ("data", "teacher", "distill")
    uses_seed = False

    def run(self, ctx: StageContext) -> dict:
        data = load_dataset(ctx.inputs["data"])
        result = {"split": "test", "images": len(data.test)}
        for role, stage in (("teacher", "teacher"), ("student", "distill")):
            result[role] = describe(ctx.inputs[stage] / "model.pt", data, ctx.device)
            r = result[role]
            ctx.progress.log(f"  {role} {r['model']}: test top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, "
                             f"{r['params'] / 1e6:.3f} M params, {r['flops'] / 1e6:.1f} MFLOPs")
        write_json(ctx.out / "metrics.json", result)
        return result
