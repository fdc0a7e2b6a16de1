"""What the manifold loss costs, measured interleaved: one distillation step with KD only, with KD + our
manifold loss and with KD + the authors' code's formulation of it (bench/official_loss.py), on the paper's
models (DeiT-Ti student, CaiT-S24 teacher, 224 px, its 8-pair layer map) and on pipeline.toml's. Also the loss
alone (forward + backward over every pair) for both formulations, the peak memory of the loss over every pair
(ours, the authors', the undecoupled (BN) x (BN) relation loss), and a torch.profiler summary of a KD step and
a KD + manifold step at the paper's shapes.

Each round runs every arm once, in a rotated order, and times it in wall-clock and process CPU seconds, at
--threads intra-op threads (1 by default: CPU time is then the least disturbed by other work on the host).
Ratios are paired within a round: their mean with a t 95% interval and their median with a bootstrap one.
Writes JSON with the host's CPU and flags, the load average, the commit and the date, and prints a table.

    .venv/bin/python bench/loss_cost.py [--quick] [--rounds N] [--threads 1] [--out bench/results/loss_cost.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.official_loss import mf_loss  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.core.fileio import write_json  # noqa: E402
from pipeline.core.stage import Accel  # noqa: E402
from stages.distill import PAPER_PRESET  # noqa: E402
from stages.distill.families import units_of  # noqa: E402
from stages.distill.features import TokenTap, aligned, default_layer_map  # noqa: E402
from stages.distill.manifold import ManifoldLoss, random_sampled_loss  # noqa: E402
from stages.distill.train import kd_loss  # noqa: E402
from stages.models import create_model  # noqa: E402
from stages.training import place  # noqa: E402
from targets.agent.host import cpu_flags, cpu_name, load  # noqa: E402

ARMS = ("kd", "ours", "official")


def shapes() -> dict[str, dict]:
    """The paper's setting and pipeline.toml's (its models, batch and loss weights)."""
    cfg = load_config(str(ROOT / "pipeline.toml"))
    d = cfg.distill
    return {
        "paper": dict(student=("deit_tiny_patch16_224", {}), teacher=("cait_s24_224", {}), img=224, chans=3,
                      classes=1000, batch=64, weights=PAPER_PRESET, rounds=10, loss_rounds=20),
        "default": dict(student=(cfg.student.model, cfg.student.overrides),
                        teacher=(cfg.teacher.model, cfg.teacher.overrides), img=cfg.data.img_size,
                        chans=cfg.data.channels, classes=10, batch=d.batch_size, rounds=30, loss_rounds=60,
                        weights={"alpha": d.alpha, "w_intra": d.w_intra, "w_inter": d.w_inter,
                                 "w_random": d.w_random, "k": d.k, "beta": d.beta}),
    }


def official(student: list[torch.Tensor], teacher: list[torch.Tensor], w: dict,
             generator: torch.Generator) -> torch.Tensor:
    """The authors' loss (bench/official_loss.py), beta times the sum of its three terms."""
    return w["beta"] * sum(mf_loss(student, teacher, w["k"], w["w_inter"], w["w_intra"], w["w_random"], generator))


def full_relation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The undecoupled loss, every pair's B*N tokens in one (BN) x (BN) map (with our memory-lean code)."""
    return sum(random_sampled_loss(s, t, s.shape[0] * s.shape[1]) for s, t in zip(student, teacher))


class Setting:
    """One shape's models, a fixed batch, the layer taps and one step function per arm. With `accel`, both models
    are placed on the CPU as the training stages place them (memory layout, attention path)."""

    def __init__(self, shape: dict, accel: Accel | None = None):
        torch.manual_seed(0)
        data = {"in_chans": shape["chans"], "num_classes": shape["classes"], "img_size": shape["img"]}
        self.student = create_model("student", *shape["student"], data)[0].train()
        self.teacher = create_model("teacher", *shape["teacher"], data)[0].eval().requires_grad_(False)
        if accel is not None:
            place(self.student, "cpu", accel)
            place(self.teacher, "cpu", accel)
        self.layers = default_layer_map(len(units_of(self.student, "student")), len(units_of(self.teacher, "teacher")))
        self.taps = TokenTap(self.student, self.layers[0], "student"), TokenTap(self.teacher, self.layers[1], "teacher")
        self.w = shape["weights"]
        self.ours = ManifoldLoss(self.w["w_intra"], self.w["w_inter"], self.w["w_random"], self.w["k"], self.w["beta"])
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-5, fused=True)
        self.x = torch.randn(shape["batch"], shape["chans"], shape["img"], shape["img"])
        self.y = torch.randint(0, shape["classes"], (shape["batch"],))
        self.rng = torch.Generator().manual_seed(0)

    def tokens(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One batch's aligned tokens of every pair, as the loss sees them."""
        with torch.no_grad(), self.taps[1].capture() as t, self.taps[0].capture() as s:
            self.teacher(self.x), self.student(self.x)
            return aligned(list(s), list(t))

    def step(self, arm: str) -> None:
        """One distillation step as the distill stage takes it (teacher in inference mode, then the student)."""
        manifold = arm != "kd"
        with torch.inference_mode(), self.taps[1].capture() if manifold else nullcontext([]) as t_tokens:
            t_logits = self.teacher(self.x)
        t_logits = t_logits.clone()
        with self.taps[0].capture() if manifold else nullcontext([]) as s_tokens:
            logits = self.student(self.x)
            s_tokens = list(s_tokens)
        alpha = self.w["alpha"]
        loss = (1 - alpha) * F.cross_entropy(logits, self.y) + alpha * kd_loss(logits, t_logits, "soft", 1.0)
        if arm == "ours":
            loss = loss + sum(self.ours(*aligned(s_tokens, t_tokens), self.rng).values())
        elif arm == "official":
            loss = loss + official(*aligned(s_tokens, t_tokens), self.w, self.rng)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(arms: dict, rounds: int, progress: str) -> dict[str, dict[str, list[float]]]:
    """Every arm once per round (one warm-up round first), the order rotated each round."""
    names = list(arms)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = timed(arms[name])
            if r:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
        print(f"\r{progress}: round {r}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return times


def median_ci(values: list[float] | np.ndarray, seed: int = 0) -> dict:
    """Median with a bootstrap 95% interval (percentiles of 2,000 resampled medians)."""
    v = np.asarray(values, dtype=float)
    boots = np.median(np.random.default_rng(seed).choice(v, (2000, len(v))), axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"median": round(float(np.median(v)), 5), "ci95": [round(float(lo), 5), round(float(hi), 5)]}


def mean_ci(values: list[float] | np.ndarray) -> dict:
    """Mean with a t 95% interval."""
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return {"mean": round(float(v.mean()), 5), "mean_ci95": [round(float(v.mean() - half), 5),
                                                             round(float(v.mean() + half), 5)]}


def ratios(times: dict, arm: str, base: str) -> dict:
    """Per-round paired ratios arm / base: median (bootstrap interval) and mean (t interval), per clock."""
    out = {}
    for clock in ("wall", "cpu"):
        r = np.array(times[arm][clock]) / np.array(times[base][clock])
        out[clock] = {**median_ci(r), **mean_ci(r)}
    return out


def loss_alone(setting: Setting, rounds: int) -> dict:
    """Forward + backward of each formulation over every pair's tokens, interleaved, the same K-draws in both;
    the values compared."""
    student, teacher = setting.tokens()

    def run(formulation: str):
        def go():
            leaves = [s.detach().requires_grad_(True) for s in student]
            rng = torch.Generator().manual_seed(1)
            value = (sum(setting.ours(leaves, teacher, rng).values()) if formulation == "ours"
                     else official(leaves, teacher, setting.w, rng))
            value.backward()
            go.value = value.detach().item()
        return go

    arms = {"ours": run("ours"), "official": run("official")}
    times = interleaved(arms, rounds, "loss alone")
    return {"rounds": rounds, "ours": {c: median_ci(times["ours"][c]) for c in ("wall", "cpu")},
            "official": {c: median_ci(times["official"][c]) for c in ("wall", "cpu")},
            "ours_over_official": ratios(times, "ours", "official"),
            "value_ours": arms["ours"].value, "value_official": arms["official"].value,
            "token_shapes": [[list(s.shape), list(t.shape)] for s, t in zip(student, teacher)]}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_mb(token_shapes: list, weights: dict, formulation: str) -> float:
    """Growth of the peak resident set (VmHWM) over forward + backward of the loss over every pair, in a fresh
    process holding only random tokens of these shapes (so no freed heap pages of earlier work hide it)."""
    spec = json.dumps({"shapes": token_shapes, "weights": weights})
    out = subprocess.run([sys.executable, __file__, "--memory-probe", spec, formulation],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_probe(spec: str, formulation: str) -> None:
    spec = json.loads(spec)
    w = spec["weights"]
    ours = ManifoldLoss(w["w_intra"], w["w_inter"], w["w_random"], w["k"], w["beta"])
    losses = {"ours": lambda s, t: sum(ours(s, t, torch.Generator().manual_seed(1)).values()),
              "official": lambda s, t: official(s, t, w, torch.Generator().manual_seed(1)),
              "full": full_relation_loss}
    warm = [torch.randn(2, 4, 8, requires_grad=True)]  # loads kernels and thread pools before the baseline
    losses[formulation](warm, [torch.randn(2, 4, 8)]).backward()
    student = [torch.randn(*s, requires_grad=True) for s, _ in spec["shapes"]]
    teacher = [torch.randn(*t) for _, t in spec["shapes"]]
    base = _status_kb("VmRSS")
    losses[formulation](student, teacher).backward()
    print((_status_kb("VmHWM") - base) / 1e3)


class CpuByOp(TorchDispatchMode):
    """Thread CPU time per aten op at the dispatch level (what an op runs inside its kernel counts as its own).
    Unlike the profiler's wall clock, time the thread spends descheduled by other work on the host is left out."""

    def __init__(self):
        super().__init__()
        self.ms, self.calls = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        self.ms[str(func)] += (time.thread_time_ns() - start) / 1e6
        self.calls[str(func)] += 1
        return out


def _op_summary(ms: dict[str, Counter], calls: dict[str, Counter], top: int) -> dict:
    """Each arm's top ops with their share of the step, and the ops that make the step difference."""
    totals = {arm: sum(ops.values()) for arm, ops in ms.items()}

    def rows(ops: Counter, total: float) -> list[dict]:
        return [{"op": op, "ms": round(t, 1), "share": round(t / total, 4)} for op, t in ops.most_common(top)]

    diff = Counter({op: ms["ours"][op] - ms["kd"][op] for op in ms["ours"] | ms["kd"]})
    return {"step_ms": {arm: round(t, 1) for arm, t in totals.items()},
            "top_ops": {arm: [{**row, "calls": calls[arm][row["op"]]} for row in rows(ms[arm], totals[arm])]
                        for arm in ms},
            "ours_minus_kd": [{**row, "calls_kd": calls["kd"][row["op"]], "calls_ours": calls["ours"][row["op"]]}
                              for row in rows(diff, totals["ours"] - totals["kd"])]}


def profile_steps(setting: Setting, reps: int, top: int = 15) -> dict:
    """A KD step and a KD + ours step, `reps` each, interleaved, per op (averaged over the reps): torch.profiler
    (CPU, record_shapes; self time, its clock is wall time) with the ours step's top (op, input shapes), then
    the thread CPU time per op (CpuByOp, separate steps)."""
    from torch.profiler import ProfilerActivity, profile

    arms = ("kd", "ours")
    prof_ms, prof_calls = {arm: Counter() for arm in arms}, {arm: Counter() for arm in arms}
    cpu_ms, cpu_calls = {arm: Counter() for arm in arms}, {arm: Counter() for arm in arms}
    by_shape = Counter()
    for r in range(reps):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                setting.step(arm)
            for e in prof.key_averages():
                prof_ms[arm][e.key] += e.self_cpu_time_total / 1e3 / reps
                prof_calls[arm][e.key] += e.count // reps
            if arm == "ours":
                for e in prof.key_averages(group_by_input_shape=True):
                    by_shape[f"{e.key} {e.input_shapes}"] += e.self_cpu_time_total / 1e3 / reps
            with CpuByOp() as ops:
                setting.step(arm)
            for op, t in ops.ms.items():
                cpu_ms[arm][op] += t / reps
                cpu_calls[arm][op] += ops.calls[op] // reps
        print(f"\rprofile: rep {r + 1}/{reps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    profiler = _op_summary(prof_ms, prof_calls, top)
    profiler["ours_top_by_shape"] = [{"op": op, "ms": round(t, 1), "share": round(t / profiler["step_ms"]["ours"], 4)}
                                     for op, t in by_shape.most_common(top)]
    return {"reps": reps, "load_avg": load(), "torch_profiler": profiler,
            "cpu_time_by_op": _op_summary(cpu_ms, cpu_calls, top)}


def measure(name: str, shape: dict, rounds: int | None, profile_reps: int) -> dict:
    setting = Setting(shape)
    load_before = load()
    steps = interleaved({arm: (lambda arm=arm: setting.step(arm)) for arm in ARMS}, rounds or shape["rounds"],
                        f"{name} steps")
    loss = loss_alone(setting, rounds * 2 if rounds else shape["loss_rounds"])
    memory = {f: round(peak_mb(loss["token_shapes"], shape["weights"], f), 1) for f in ("ours", "official", "full")}
    result = {"models": {"student": shape["student"][0], "teacher": shape["teacher"][0]},
              "batch": shape["batch"], "img": shape["img"], "weights": shape["weights"],
              "layers": {"student": setting.layers[0], "teacher": setting.layers[1]},
              "load_avg": {"before": load_before, "after": load()}, "rounds": len(steps["kd"]["wall"]),
              "step_s": {arm: {c: median_ci(steps[arm][c]) for c in ("wall", "cpu")} for arm in ARMS},
              "step_over_kd": {arm: ratios(steps, arm, "kd") for arm in ("ours", "official")},
              "loss_alone": loss, "peak_mb_all_pairs": memory}
    if profile_reps:
        result["profile"] = profile_steps(setting, profile_reps)
    return result


def commit() -> dict:
    """HEAD and whether tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"hash": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def print_table(result: dict) -> None:
    table = Table(title=f"manifold loss cost on {result['host']['cpu']}, {result['host']['threads']} thread(s) "
                        "(CPU time; mean of paired ratios, 95% t interval)")
    for col in ("shape", "KD step s", "ours / KD step", "official / KD step", "loss: ours / official",
                "MB ours", "MB official", "MB full"):
        table.add_column(col, justify="right")

    def cell(r: dict) -> str:
        return f"{r['mean']:.3f} [{r['mean_ci95'][0]:.3f}, {r['mean_ci95'][1]:.3f}]"

    for name, row in result["shapes"].items():
        m = row["peak_mb_all_pairs"]
        table.add_row(name, f"{row['step_s']['kd']['cpu']['median']:.3f}", cell(row["step_over_kd"]["ours"]["cpu"]),
                      cell(row["step_over_kd"]["official"]["cpu"]),
                      cell(row["loss_alone"]["ours_over_official"]["cpu"]),
                      f"{m['ours']:.0f}", f"{m['official']:.0f}", f"{m['full']:.0f}")
    Console(width=160).print(table)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-probe":
        return _memory_probe(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only pipeline.toml's shapes, 5 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="step rounds per shape (default 10 paper, 30 default)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--profile-reps", type=int, default=2, help="profiled steps per arm at the paper's shapes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"bench/results/loss_cost{'_quick' if args.quick else ''}.json")
    result = {"host": {"cpu": cpu_name(), "flags": cpu_flags(), "threads": torch.get_num_threads()},
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit(),
              "torch": torch.__version__, "command": " ".join(["bench/loss_cost.py", *sys.argv[1:]]), "shapes": {}}
    for name, shape in shapes().items():
        if args.quick and name == "paper":
            continue
        result["shapes"][name] = measure(name, shape, 5 if args.quick else args.rounds,
                                         args.profile_reps if name == "paper" else 0)
        write_json(out, result)
    print_table(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
