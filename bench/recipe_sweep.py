"""Shorter training recipes vs test top-1: the default teacher and student trained with fewer epochs, other
learning rates and a larger batch (the real pipeline, `manifold-edge run --until teacher|distill`), each
recipe with seeds 0 and 1, up to --jobs runs at a time. Built to answer issue 18's question of whether
fewer epochs keep the accuracy goals (teacher >= 88%, student >= 87% test top-1). Writes JSON after
every run; on a CPU use --quick (a 600-image smoke run).

    python bench/recipe_sweep.py --device cuda [--jobs 8] [--set data.path=...] [--out FILE] [--quick]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEACHERS = {
    "T7": ["teacher.epochs=7"],
    "T5": ["teacher.epochs=5"],
    "T4": ["teacher.epochs=4"],
    "T3": ["teacher.epochs=3"],
    "T4_lr3": ["teacher.epochs=4", "teacher.lr=3e-3"],
    "T3_lr3": ["teacher.epochs=3", "teacher.lr=3e-3"],
    "T4_b256": ["teacher.epochs=4", "teacher.batch_size=256", "teacher.lr=3e-3"],
}
DISTILLS = {
    "D6": ["distill.epochs=6"],
    "D3": ["distill.epochs=3"],
    "D2": ["distill.epochs=2"],
    "D3_lr3": ["distill.epochs=3", "distill.lr=3e-3"],
    "D2_lr3": ["distill.epochs=2", "distill.lr=3e-3"],
}
PLAN_T = [("T7", 0), ("T4_b256", 0)] + [(t, s) for t in ("T5", "T4", "T3", "T4_lr3", "T3_lr3") for s in (0, 1)]
PLAN_D = [("T7", "D6", 0)] + [(t, d, s) for t in ("T4", "T4_lr3", "T3_lr3") for d in ("D3", "D2", "D3_lr3", "D2_lr3")
                              for s in (0, 1)]


class Sweep:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.out = args, work, Path(args.out)
        self.base = [f"run.device='{args.device}'", "run.threads=2", "benchmark.enabled=false", *args.extra]
        if args.quick:
            self.base += ["data.subset=600", "data.test_subset=500", "teacher.epochs=1", "distill.epochs=1"]
        self.result = {"device": args.device, "command": " ".join(["bench/recipe_sweep.py", *sys.argv[1:]]),
                       "teachers": TEACHERS, "distills": DISTILLS, "runs": []}

    def pipeline(self, folder: Path, overrides: list[str], until: str) -> tuple[float, str]:
        args = [sys.executable, "-m", "pipeline", "run", "--config", str(ROOT / "pipeline.toml"), "--until", until]
        for item in [f"run.output_dir='{folder}'", *overrides, *self.base]:
            args += ["--set", item]
        start = time.perf_counter()
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        return time.perf_counter() - start, (done.stderr[-1500:] if done.returncode else "")

    def evaluate(self, folder: Path, stage: str) -> dict:
        from stages.batches import load_dataset
        from stages.models import load_model
        from stages.training import accuracy
        cache = folder / ".cache"
        data = load_dataset(next(p for p in cache.glob("data-*") if p.suffix != ".partial"))
        artifact = next(p for p in cache.glob(f"{stage}-*") if p.suffix != ".partial")
        model, _ = load_model(artifact / "model.pt")
        epochs = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
        return {"test_top1": round(accuracy(model.to(self.args.device), data.test, self.args.device)[1], 3),
                "val_top1": epochs[-1].get("val_top1"), "images_per_s": [e["images_per_s"] for e in epochs]}

    def teacher(self, t: str, seed: int) -> dict:
        folder = self.work / f"{t}_s{seed}"
        wall, error = self.pipeline(folder, [f"run.seed={seed}", *TEACHERS[t], "run.name='t'"], "teacher")
        return {"teacher": t, "seed": seed, "wall_s": round(wall, 1), "error": error,
                **({} if error else {"teacher_eval": self.evaluate(folder, "teacher")})}

    def distill(self, t: str, d: str, seed: int) -> dict:
        folder = self.work / f"{t}_{d}_s{seed}"
        for artifact in (self.work / f"{t}_s{seed}" / ".cache").iterdir():  # the trained teacher is reused
            if artifact.name.startswith(("data-", "teacher-")) and artifact.suffix != ".partial":
                shutil.copytree(artifact, folder / ".cache" / artifact.name, dirs_exist_ok=True)
        wall, error = self.pipeline(folder, [f"run.seed={seed}", *TEACHERS[t], *DISTILLS[d], "run.name='d'"],
                                    "distill")
        return {"teacher": t, "distill": d, "seed": seed, "wall_s": round(wall, 1), "error": error,
                **({} if error else {"student_eval": self.evaluate(folder, "distill")})}

    def save(self) -> None:
        self.result["summary"] = summary(self.result["runs"])
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1) + "\n")

    def run(self) -> None:
        plans = [(self.teacher, PLAN_T), (self.distill, PLAN_D)]
        if self.args.quick:
            plans = [(self.teacher, [("T3", 0)]), (self.distill, [("T3", "D2", 0)])]
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for job, plan in plans:
                for done in as_completed([pool.submit(job, *item) for item in plan]):
                    self.result["runs"].append(done.result())
                    print(json.dumps(self.result["runs"][-1]), flush=True)
                    self.save()


def summary(runs: list[dict]) -> list[dict]:
    """Test top-1 per recipe: every seed, and the mean."""
    groups: dict[str, list[float]] = {}
    for run in runs:
        if not run["error"]:
            name = run["teacher"] + (f" -> {run['distill']}" if "distill" in run else "")
            key = "student_eval" if "distill" in run else "teacher_eval"
            groups.setdefault(name, []).append(run[key]["test_top1"])
    return [{"recipe": name, "test_top1": values, "mean": round(statistics.fmean(values), 2)}
            for name, values in groups.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--jobs", type=int, default=8, help="pipeline runs at a time")
    parser.add_argument("--quick", action="store_true", help="one 600-image, 1-epoch recipe (a smoke run)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "recipe_sweep_cuda.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        Sweep(args, Path(work)).run()


if __name__ == "__main__":
    main()
