"""Teacher -> student pairings of real timm families through the CLI with every format on, as a user runs them:
what each target ships (overall and per SDK), with the run's warnings and notes. The models are shrunk and trained
one epoch on 600 Fashion-MNIST images at 32 px (bench/model_zoo.py's settings), so the answers test the ship rule
and the deploy folders, not accuracy. Writes JSON (host, commit, load average, per pairing: wall, ship lines).

    .venv/bin/python bench/zoo_pairings.py [--only NAME ...] [--out bench/results/zoo_pairings.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.model_zoo import SETTINGS, ZOO, _toml  # noqa: E402
from pipeline.core.fileio import read_json, write_json  # noqa: E402
from targets.agent.host import cpu_flags, cpu_name  # noqa: E402

TEACHERS = {  # name -> (timm model, overrides)
    "cait": ("cait_xxs24_224", ZOO["cait_xxs24"][1]),
    "vit": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)),
    "resnet": ("resnet18", dict(layers=(1, 1, 1, 1))),
}
PVT = ("pvt_v2_b0", dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)))
PAIRINGS = {  # name -> (teacher, (student model, overrides))
    "cait-deit": ("cait", ZOO["deit_tiny_distilled"][:2]),
    "vit-swin": ("vit", ZOO["swin_tiny"][:2]),
    "vit-mobilevit": ("vit", ZOO["mobilevit_xxs"][:2]),
    "resnet-levit": ("resnet", ZOO["levit_128s"][:2]),
    "resnet-efficientvit": ("resnet", ZOO["efficientvit_m0"][:2]),
    "resnet-mobilenetv3": ("resnet", ZOO["mobilenetv3_small"][:2]),
    "resnet-pvtv2": ("resnet", PVT),
}


def settings(name: str, output_dir: Path) -> list[str]:
    teacher, (student, student_overrides) = TEACHERS[PAIRINGS[name][0]], PAIRINGS[name][1]
    shared = [s for s in SETTINGS if not s.startswith("teacher.overrides")]
    return [*shared, f"run.output_dir='{output_dir}'", f"run.name='{name}'", "data.img_size=32", "evaluate.arm64='off'",
            f"teacher.model='{teacher[0]}'", f"teacher.overrides={_toml(teacher[1])}",
            f"student.model='{student}'", f"student.overrides={_toml(student_overrides)}"]


def ship_lines(report: dict) -> dict[str, str]:
    """target -> 'overall: runtime/artifact (precision); per SDK: ...' from report.json."""
    lines = {}
    for target, answer in (report.get("ship") or {}).items():
        per_sdk = "; ".join(f"{runtime}: {c.get('artifact') or 'nothing'}" + (f" ({c['precision']})" if
                            c.get("artifact") else "") for runtime, c in answer["by_runtime"].items())
        lines[target] = f"overall {answer.get('overall')}/{answer.get('artifact')}; {per_sdk}"
    return lines


def run_pairing(name: str, output_dir: Path, timeout: float) -> dict:
    args = [sys.executable, "-m", "pipeline", "run", str(ROOT / "pipeline.toml")]
    for item in settings(name, output_dir):
        args += ["--set", item]
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "exit": None, "wall_s": round(time.perf_counter() - start, 1),
                "error": f"did not finish in {timeout:.0f} s"}
    row = {"name": name, "exit": done.returncode, "wall_s": round(time.perf_counter() - start, 1),
           "tracebacks": (done.stdout + done.stderr).count("Traceback")}
    report_file = output_dir / name / "report.json"
    if done.returncode or not report_file.is_file():
        return {**row, "error": (done.stderr.strip().splitlines() or ["(no output)"])[-1]}
    report = read_json(report_file)
    quantize = (report["stages"].get("quantize") or {}).get("summary") or {}
    return {**row, "ship": ship_lines(report), "warnings": report["evaluation"].get("warnings", []),
            "quantize_notes": quantize.get("notes", []),
            "stage_seconds": {k: (v or {}).get("wall_s") for k, v in report["stages"].items()},
            "teacher_top1": report["evaluation"]["teacher"]["top1"],
            "student_top1": report["evaluation"]["student"]["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(PAIRINGS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zoo_pairings.json")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pairing")
    args = parser.parse_args()
    rows = {r["name"]: r for r in (read_json(args.out)["pairings"] if args.only and args.out.exists() else [])}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    host = {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="manifold-edge-pairings-") as tmp:
        for name in args.only or PAIRINGS:
            load = os.getloadavg()[0]
            rows[name] = {**run_pairing(name, Path(tmp), args.timeout), "load_before": round(load, 2)}
            print(json.dumps(rows[name], indent=1), flush=True)
            write_json(args.out, {"host": host, "commit": commit, "date": time.strftime("%Y-%m-%d"),
                                  "command": " ".join(sys.argv),
                                  "pairings": [rows[n] for n in PAIRINGS if n in rows]})


if __name__ == "__main__":
    main()
