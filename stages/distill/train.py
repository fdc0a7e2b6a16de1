"""The distill stage's work: train the student with (1-alpha) CE + alpha KD + the manifold loss over a layer map."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from pipeline.core.distributed import world
from pipeline.core.errors import UserError
from pipeline.core.stage import StageContext
from stages.batches import load_dataset
from stages.checkpoints import METRICS
from stages.data import DataConfig
from stages.distill import DistillConfig, StudentConfig
from stages.distill.families import family_of, units_of
from stages.distill.features import TokenTap, aligned, checked_units, default_layer_map, estimated_tokens
from stages.distill.manifold import ManifoldLoss
from stages.models import create_model, data_kwargs, load_model, save_model
from stages.training import accuracy, fit, place

log = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float
            ) -> torch.Tensor:
    """soft: T^2 KL(p_teacher || p_student) at temperature T (batch mean); hard: CE on the teacher's argmax."""
    if kind == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


@contextmanager
def _capture(taps: tuple[TokenTap, ...], which: int, into: list):
    """Collect the tokens of taps[which] into `into` during the block (no-op without taps)."""
    if not taps:
        yield
        return
    with taps[which].capture() as tokens:
        yield
        into.extend(tokens)


def distill(ctx: StageContext) -> dict:
    """Train the student on the teacher; write model.pt and metrics.jsonl into ctx.out; the summary."""
    cfg: DistillConfig = ctx.config["distill"]
    student_cfg: StudentConfig = ctx.config["student"]
    data_cfg: DataConfig = ctx.config["data"]
    data = load_dataset(ctx.inputs["data"])
    teacher, _ = load_model(ctx.inputs["teacher"] / "model.pt")
    place(teacher.requires_grad_(False), ctx.device, ctx.accel)
    torch.manual_seed(ctx.seed)
    student, kwargs = create_model("student", student_cfg.model, student_cfg.overrides, data_kwargs(data.meta))
    distilled = hasattr(student, "set_distilled_training")
    if distilled:
        student.set_distilled_training(True)

    layers = manifold_layers(cfg, student, teacher, data.meta["img_size"])
    manifold = ManifoldLoss(cfg.w_intra, cfg.w_inter, cfg.w_random, cfg.k, cfg.beta)
    use_manifold = uses_manifold(cfg)
    needs_teacher = cfg.kd != "none" or use_manifold
    taps = (TokenTap(student, layers[0], "student"), TokenTap(teacher, layers[1], "teacher")) \
        if use_manifold else ()
    log.info(manifold_line(cfg, taps, student, teacher))

    def step(forward, x, y, rng):
        student_tokens, teacher_tokens = [], []
        if needs_teacher:
            with torch.inference_mode(), _capture(taps, 1, teacher_tokens):
                teacher_logits = teacher.eval()(x)
            # inference tensors cannot be saved for the student's backward: clone the logits out of that mode
            # (the taps' copies of the tokens are made outside it)
            teacher_logits = teacher_logits.clone()
        with _capture(taps, 0, student_tokens):
            out = forward(x)
        cls_logits, kd_logits = out if distilled else (out, out)
        ce = F.cross_entropy(cls_logits, y, label_smoothing=cfg.label_smoothing)
        terms = {}
        if cfg.kd == "none":
            terms["ce"] = ce
        else:
            terms["ce"] = (1 - cfg.alpha) * ce
            terms["kd"] = cfg.alpha * kd_loss(kd_logits, teacher_logits, cfg.kd, cfg.temperature)
        if use_manifold:
            terms.update(manifold(*aligned(student_tokens, teacher_tokens), rng))
        loss = sum(terms.values())
        return loss, {name: value.detach() for name, value in terms.items()}

    try:
        rows = fit(student, step, data.train, data.val, cfg, data_cfg.augment_shift, data_cfg.augment_flip,
                   ctx.out, ctx.device, ctx.seed, ctx.progress, "distill", ctx.accel)
    finally:
        for tap in taps:
            tap.close()
    if distilled:
        student.set_distilled_training(False)
    val = accuracy(student, data.val, ctx.device)[1]
    if world().main:
        save_model(ctx.out / "model.pt", student, student_cfg.model, kwargs)
    log.info(f"student {student_cfg.model}: val top-1 {val:.2f}%")
    return {"model": student_cfg.model, "val_top1": round(val, 3), "kd": cfg.kd, "manifold": use_manifold,
            "student_layers": layers[0], "teacher_layers": layers[1], "distilled_head": distilled,
            **_matching(taps, student, teacher),
            "params": sum(p.numel() for p in student.parameters()),
            "train_seconds": round(sum(r["seconds"] for r in rows), 1), "processes": world().size,
            "metrics_file": METRICS}


def _matching(taps: tuple[TokenTap, ...], student, teacher) -> dict:
    """The families and the unit names matched, for the report (nothing without the manifold loss)."""
    if not taps:
        return {}
    return {"families": {"student": family_of(student, "student").name, "teacher": family_of(teacher, "teacher").name},
            "matched_units": [[s.name, t.name] for s, t in zip(taps[0].units, taps[1].units)]}


def manifold_line(cfg: DistillConfig, taps: tuple[TokenTap, ...], student, teacher) -> str:
    """The console's line on the loss: KD and whether the manifold terms are on, over which units (named as the
    models' families name them: blocks of a ViT, stages of a Swin or a CNN)."""
    if not taps:
        why = "distill.manifold = false" if not cfg.manifold else "its weights or beta are 0"
        return f"loss: CE + KD `{cfg.kd}`; manifold loss off ({why})"
    matched = _matching(taps, student, teacher)
    pairs = ", ".join(f"{s} <- {t}" for s, t in matched["matched_units"])
    return (f"loss: CE + KD `{cfg.kd}` + manifold loss (intra {cfg.w_intra:g}, inter {cfg.w_inter:g}, random "
            f"{cfg.w_random:g}, beta {cfg.beta:g}) on {len(matched['matched_units'])} pairs, student "
            f"({matched['families']['student']}) <- teacher ({matched['families']['teacher']}): {pairs}")


def uses_manifold(cfg: DistillConfig) -> bool:
    return cfg.manifold and any((cfg.w_intra, cfg.w_inter, cfg.w_random)) and cfg.beta > 0


def manifold_layers(cfg: DistillConfig, student, teacher, img_size: int) -> tuple[list[int], list[int]]:
    """The (student, teacher) units to match, checked against both models' families and distill.k;
    ([], []) with distill.manifold off."""
    if not cfg.manifold:
        return [], []
    if cfg.student_layers is not None:
        layers = cfg.student_layers, cfg.teacher_layers
    else:
        layers = default_layer_map(len(units_of(student, "student")), len(units_of(teacher, "teacher")))
    if uses_manifold(cfg):
        pairs = zip(checked_units(student, layers[0], "student"), checked_units(teacher, layers[1], "teacher"))
        if cfg.w_random > 0:
            _check_k(cfg, max(min(estimated_tokens(s, img_size), estimated_tokens(t, img_size)) for s, t in pairs))
    return layers


def _check_k(cfg: DistillConfig, tokens: int) -> None:
    """The random-sampled term draws K of a pair's B*N tokens (K is clamped on pairs with fewer)."""
    total = cfg.batch_size * tokens
    if cfg.k > total:
        raise UserError(f"distill.k = {cfg.k} is larger than the B*N = {cfg.batch_size}*{tokens} = {total} tokens "
                        f"of a batch at the finest matched grid: set distill.k <= {total} (or a larger batch_size)")
