"""Distillation quality: test top-1 of the same student trained without KD, with soft KD, with KD + the manifold
loss, with KD + each manifold term alone, and with the paper's preset (distill.preset = "paper", alpha = 1) against
KD at alpha = 1, over five seeds, from the default teacher (trained once with pipeline.toml's recipe and pinned
across seeds and variants); the paper's pairing in miniature (a shrunk CaiT teacher -> a shrunk DeiT student on
3-channel 32-px images, 64 tokens each; the teacher trained once and pinned; three seeds); a teacher with another
patch grid and a CNN teacher (one seed). Every run is the CLI (`manifold-edge run --until distill`), up to --jobs
at a time, through a cache kept in --work, so a rerun reuses finished runs. Seeds give both arms of a comparison
the same data order and augmentation (separate random streams), so differences are paired by seed: the JSON holds
per-seed values, mean, std, a 95% t interval and a paired t-test for each comparison, with the commit, host, date
and load average. Writes JSON, prints a table.

    .venv/bin/python bench/distill_quality.py [CONFIG] [--quick] [--threads 1] [--jobs 2] [--device cpu]
        [--set KEY=VALUE] [--variants NAME ...] [--work DIR] [--out PATH]
    .venv/bin/python bench/distill_quality.py --pair FILE    (the paired tests of a finished JSON again)
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core.fileio import write_json  # noqa: E402
from stages.batches import load_dataset  # noqa: E402
from stages.models import load_model  # noqa: E402
from stages.training import accuracy  # noqa: E402
from targets.agent.host import cpu_flags, cpu_name  # noqa: E402

# Reduced setting: the students train on a subset for fewer epochs than pipeline.toml, so that
# 8 variants x 5 seeds + 3 extra teachers and their students fit in about an hour on 2 CPU cores.
SETTINGS = {
    "full": {"subset": 10_000, "test_subset": 0, "epochs": 6, "seeds": [0, 1, 2, 3, 4]},
    "quick": {"subset": 2_000, "test_subset": 2_000, "epochs": 1, "seeds": [0]},
}
# name -> (teacher, distill overrides); teacher "default" is pipeline.toml's (one epoch on the subset with
# --quick), pinned by its checkpoint
DEIT = ["student.model='deit_tiny_patch16_224'", "student.overrides={patch_size=4, embed_dim=48, depth=4, num_heads=3}"]
VARIANTS = {
    "none": ("default", ["distill.kd='none'", "distill.manifold=false"]),
    "kd": ("default", ["distill.manifold=false"]),
    "kd+manifold": ("default", []),
    "kd+intra": ("default", ["distill.w_inter=0.0", "distill.w_random=0.0"]),
    "kd+inter": ("default", ["distill.w_intra=0.0", "distill.w_random=0.0"]),
    "kd+random": ("default", ["distill.w_intra=0.0", "distill.w_inter=0.0"]),
    "kd (alpha 1)": ("default", ["distill.manifold=false", "distill.alpha=1.0"]),
    "kd+manifold (paper preset)": ("default", ["distill.preset='paper'"]),
    "cait -> deit: kd": ("cait", ["distill.manifold=false", *DEIT]),
    "cait -> deit: kd+manifold": ("cait", DEIT),
    "patch2 teacher: kd": ("patch2", ["distill.manifold=false"]),
    "patch2 teacher: kd+manifold": ("patch2", []),
    "cnn teacher: kd": ("cnn", ["distill.manifold=false"]),
    "cnn teacher: kd+manifold": ("cnn", []),
}
# (variant, baseline): the comparisons given a paired test over the seeds
COMPARISONS = [("kd", "none"), ("kd+manifold", "kd"), ("cait -> deit: kd+manifold", "cait -> deit: kd"),
               ("kd+manifold (paper preset)", "kd (alpha 1)"),
               ("kd+manifold (paper preset)", "kd+manifold"), ("kd+intra", "kd"), ("kd+inter", "kd"),
               ("kd+random", "kd")]
# Extra teachers, trained here on the bench's subset for the bench's epochs (pipeline.toml's recipe otherwise).
# patch 2 gives an 8x8 token grid against the student's 4x4; repvgg_a0 is a timm CNN that accepts img_size; the
# CaiT (patch 4: 8x8 tokens, as the DeiT student's) sees the images as RGB (data.channels = 3, in run_all).
TEACHERS = {
    "patch2": ["teacher.model='convstem_vit_small'", "teacher.overrides.patch_size=2"],
    "cnn": ["teacher.model='repvgg_a0'"],
    "cait": ["teacher.model='cait_xxs24_224'",
             "teacher.overrides={patch_size=4, embed_dim=96, depth=6, num_heads=3, depth_token_only=1}"],
}
SEEDS = {"default": 5, "cait": 3}  # seeds per teacher (the first N of the setting's); others one


class RunFailed(Exception):
    """A run the CLI refused (exit 2: a user error, recorded as the variant's result) or that crashed."""

    def __init__(self, message: str, refused: bool):
        super().__init__(message)
        self.refused = refused


def cli_run(config: str, out_dir: Path, name: str, overrides: list[str], until: str) -> dict[str, Path]:
    """One `manifold-edge run` to `until`; the artifact folder of each stage it ran, from its state.json."""
    args = [sys.executable, "-m", "pipeline", "run", "--config", config, "--until", until]
    for item in [f"run.output_dir='{out_dir}'", f"run.name='{name}'", *overrides]:
        args += ["--set", item]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RunFailed(lines[-1] if lines else f"exit {done.returncode}", refused=done.returncode == 2)
    state = json.loads((out_dir / name / "state.json").read_text())
    return {stage: out_dir / ".cache" / f"{stage}-{entry['key'][:16]}" for stage, entry in state.items()}


def manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


@functools.cache
def test_top1(model_dir: Path, data_dir: Path, device: str) -> float:
    """Top-1 (%) of an artifact's model.pt on the data artifact's test split."""
    model = load_model(model_dir / "model.pt")[0].to(device)
    return round(accuracy(model, load_dataset(data_dir).test, device)[1], 3)


def summarise(runs: list[dict]) -> dict:
    top1 = [r["top1"] for r in runs]
    return {"mean": round(statistics.mean(top1), 3), "std": round(statistics.stdev(top1), 3) if len(top1) > 1 else None,
            "mean_wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1)}


def paired(variant: dict, baseline: dict) -> dict | None:
    """Per-seed differences (variant - baseline), their mean and std, the mean's 95% t interval and a two-sided
    paired t-test (both need scipy: None where it is missing, as on a bare GPU machine; `--pair FILE` fills them
    in later)."""
    a = {r["seed"]: r["top1"] for r in variant.get("runs", [])}
    b = {r["seed"]: r["top1"] for r in baseline.get("runs", [])}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    if not std:  # identical differences: no spread to test against
        return {"seeds": seeds, "differences": [round(d, 3) for d in diffs], "mean_difference": round(mean, 3),
                "std_difference": 0.0, "interval_95": [round(mean, 3)] * 2, "t": None, "p_two_sided": None}
    sem = std / len(diffs) ** 0.5
    try:
        from scipy.stats import t as student_t
        p = round(float(2 * student_t.sf(abs(mean / sem), len(diffs) - 1)), 4)
        half = float(student_t.ppf(0.975, len(diffs) - 1)) * sem
        interval = [round(mean - half, 3), round(mean + half, 3)]
    except ImportError:
        p = interval = None
    return {"seeds": seeds, "differences": [round(d, 3) for d in diffs], "mean_difference": round(mean, 3),
            "std_difference": round(std, 3), "interval_95": interval, "t": round(mean / sem, 3), "p_two_sided": p}


def pair_all(result: dict) -> dict:
    variants = result["variants"]
    return {f"{a} vs {b}": test for a, b in COMPARISONS
            if a in variants and b in variants and (test := paired(variants[a], variants[b]))}


def commit() -> str:
    """HEAD's short hash, "+dirty" where the tree has uncommitted changes."""
    git = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True)
    head = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    return head + ("+dirty" if git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip() else "")


def host() -> dict:
    return {"cpu": cpu_name(), "flags": cpu_flags(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_table(result: dict) -> None:
    s = result["setting"]
    table = Table(title=f"student test top-1, {s['subset']} training images (val included), {s['epochs']} epochs")
    for col in ("variant", "teacher", "teacher %", "seeds", "top-1 %", "std", "per seed", "s / run"):
        table.add_column(col, justify="left" if col in ("variant", "teacher") else "right")
    refused = []
    for name, v in result["variants"].items():
        if "error" in v:
            table.add_row(name, v["teacher"], "", "", "refused")
            refused.append(f"{name}: {v['error']}")
            continue
        if not v["runs"]:  # not run (--variants) or not reached yet
            continue
        v["runs"].sort(key=lambda r: r["seed"])
        std = "-" if v["std"] is None else f"{v['std']:.2f}"
        table.add_row(name, v["teacher"], f"{v['runs'][0]['teacher_top1']:.2f}", str(len(v["runs"])),
                      f"{v['mean']:.2f}", std, " ".join(f"{r['top1']:.2f}" for r in v["runs"]),
                      f"{v['mean_wall_s']:.0f}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for line in refused:
        console.print(f"refused: {line}")
    tests = Table(title="paired by seed: variant - baseline (top-1 points)")
    for col in ("comparison", "per seed", "mean", "95% interval", "std", "t", "p (two-sided)"):
        tests.add_column(col, justify="left" if col == "comparison" else "right")
    for name, t in result.get("paired", {}).items():
        interval = t.get("interval_95")
        tests.add_row(name, " ".join(f"{d:+.2f}" for d in t["differences"]), f"{t['mean_difference']:+.2f}",
                      "-" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]",
                      f"{t['std_difference']:.2f}",
                      "-" if t["t"] is None else f"{t['t']:.2f}",
                      "-" if t["p_two_sided"] is None else f"{t['p_two_sided']:.3f}")
    console.print(tests)


def run_all(config: str, s: dict, args: argparse.Namespace, out: Path) -> dict:
    """The default teacher first, then every variant and seed, up to --jobs at a time; the JSON is rewritten
    after each run, so an interrupted bench leaves the finished ones (and their cache)."""
    start = time.perf_counter()
    work = Path(args.work).resolve()
    base = [f"run.threads={s['threads']}", f"run.device='{args.device}'", "benchmark.enabled=false", *args.extra]
    print("training (or reusing) the default teacher ...", file=sys.stderr)
    smoke = [f"data.subset={s['subset']}", "teacher.epochs=1"] if s["mode"] == "quick" else []
    alone = [f"run.threads={os.cpu_count() or 1}"]  # a teacher trains alone: every core
    arts = cli_run(config, work / "default-teacher", "teacher", base + smoke + alone, "teacher")
    meta = manifest(arts["data"])["summary"]
    pin = [f"teacher.checkpoint='{arts['teacher'] / 'model.pt'}'", "teacher.epochs=0"]
    common = base + [f"data.subset={s['subset']}", f"data.test_subset={s['test_subset']}",
                     f"distill.epochs={s['epochs']}", f"data.mean={meta['mean']}", f"data.std={meta['std']}"]
    teachers = {"default": pin, **{k: v + [f"teacher.epochs={s['epochs']}"] for k, v in TEACHERS.items()}}
    # the CaiT sees RGB; trained once here (seed 0) and pinned, as the default teacher, since it has several seeds
    teachers["cait"] += ["data.channels=3", f"data.mean={meta['mean'] * 3}", f"data.std={meta['std'] * 3}"]
    pinned = {"default": arts["teacher"]}
    if any(VARIANTS[name][0] == "cait" for name in args.variants):
        print("training (or reusing) the CaiT teacher ...", file=sys.stderr)
        cait = cli_run(config, work / "cait-teacher", "teacher", common + teachers["cait"] + alone, "teacher")
        pinned["cait"] = cait["teacher"]
        teachers["cait"] += [f"teacher.checkpoint='{cait['teacher'] / 'model.pt'}'", "teacher.epochs=0"]
    result = {"setting": s, "config": config, "device": args.device, "jobs": args.jobs,
              "command": " ".join(["bench/distill_quality.py", *sys.argv[1:]]), "common_overrides": common,
              "teachers": teachers, "pinned_teachers": {name: {"path": str(path),
                                                               "summary": manifest(path)["summary"]}
                                                        for name, path in pinned.items()},
              "commit": commit(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "load_average_before": [round(x, 2) for x in os.getloadavg()],
              "host": host(), "variants": {name: {"teacher": which, "overrides": extra, "runs": []}
                                           for name, (which, extra) in VARIANTS.items() if name in args.variants},
              "complete": False}
    tasks = [(name, seed) for name, (which, _) in VARIANTS.items() if name in args.variants
             for seed in s["seeds"][:SEEDS.get(which, 1)]]

    def one(task: tuple[str, int]) -> tuple[str, dict]:
        name, seed = task
        which, extra = VARIANTS[name]
        run_name = "".join(c if c.isalnum() else "-" for c in name) + f"-seed{seed}"
        try:
            begun = time.perf_counter()
            done = cli_run(config, work / which, run_name, common + teachers[which] + extra + [f"run.seed={seed}"],
                           "distill")
            wall = time.perf_counter() - begun
        except RunFailed as exc:
            if not exc.refused:
                raise
            return name, {"seed": seed, "error": str(exc)}
        distill = manifest(done["distill"])
        return name, {"seed": seed, "top1": test_top1(done["distill"], done["data"], args.device),
                      "teacher_top1": test_top1(done["teacher"], done["data"], args.device),
                      "val_top1": distill["summary"]["val_top1"], "wall_s": round(distill["wall_s"], 1),
                      "cli_wall_s": round(wall, 1), "train_s": distill["summary"]["train_seconds"]}

    with ThreadPoolExecutor(args.jobs) as pool:
        for name, run in pool.map(one, tasks):
            entry = result["variants"][name]
            if "error" in run:
                entry["error"] = run["error"]
            else:
                entry["runs"].append(run)
                entry.update(summarise(entry["runs"]))
            print(f"{name} seed {run['seed']}: {run.get('top1', run.get('error'))}", file=sys.stderr)
            result["wall_s"] = round(time.perf_counter() - start, 1)
            write_json(out, result)
    result["paired"] = pair_all(result)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["complete"] = True
    write_json(out, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="pipeline.toml")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 1 epoch, 1 seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: robust on a shared host)")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="runs at a time")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for every run, e.g. data.path=...")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME",
                        help="run only these variants (default: all, in this order: " + ", ".join(VARIANTS) + ")")
    parser.add_argument("--work", default="runs/bench-distill-quality", help="output_dir of the runs (their cache)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--pair", metavar="FILE", help="only recompute the paired tests of a finished JSON")
    args = parser.parse_args()
    if args.pair:
        result = json.loads(Path(args.pair).read_text())
        result["paired"] = pair_all(result)
        write_json(Path(args.pair), result)
        return print_table(result)
    mode = "quick" if args.quick else "full"
    out = Path(args.out or f"bench/results/distill_quality{'_quick' if args.quick else ''}.json")
    result = run_all(args.config, {"mode": mode, **SETTINGS[mode], "threads": args.threads}, args, out)
    print_table(result)
    print(f"total {result['wall_s']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
