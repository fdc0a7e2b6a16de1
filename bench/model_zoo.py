"""The model zoo: small configs of real timm families, each through distill -> export -> quantize -> evaluate.

Shrunk (a few blocks, narrow widths, 32-64 px Fashion-MNIST, one epoch on 600 images) so the whole zoo runs
in minutes on a laptop CPU: it checks that each family goes through every stage (manifold units, export
parity, INT8 and Core ML rows), not what accuracy a fully trained model reaches (the bench trains 3 epochs on
3,000 images, the test one epoch on 600). Writes JSON and prints the
models table in docs/models.md:

    .venv/bin/python bench/model_zoo.py [--out bench/results/model_zoo.json] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.distill_quality import commit  # noqa: E402
from pipeline import run  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.fileio import read_json, write_json  # noqa: E402
from targets.agent.host import cpu_flags, cpu_name, int8_instructions, load  # noqa: E402

# name -> (timm model, overrides, img_size)
ZOO: dict[str, tuple[str, dict, int]] = {
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224",
                            dict(patch_size=4, embed_dim=32, depth=2, num_heads=2), 32),
    "cait_xxs24": ("cait_xxs24_224", dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, depth_token_only=1), 32),
    "vit_registers": ("vit_little_patch16_reg4_gap_256", dict(patch_size=4, embed_dim=32, depth=2, num_heads=2), 32),
    "swin_tiny": ("swin_tiny_patch4_window7_224",
                  dict(patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), 32),
    "levit_128s": ("levit_128s", dict(embed_dim=(32, 48, 64), depth=(1, 1, 1), num_heads=(1, 2, 2), key_dim=8), 32),
    "efficientvit_m0": ("efficientvit_m0", dict(embed_dim=(16, 32, 48), depth=(1, 1, 1), num_heads=(2, 2, 2)), 32),
    "mobilevit_xxs": ("mobilevit_xxs", {}, 32),
    "mobilenetv3_small": ("mobilenetv3_small_050", {}, 32),
    "resnet18": ("resnet18", dict(layers=(1, 1, 1, 1)), 32),
}

# the teacher: the default conv-stem ViT, shrunk; one per image size, shared through the artifact cache
SETTINGS = [
    "data.subset=600", "data.test_subset=200", "run.threads=2",
    "teacher.overrides={embed_dim=32, depth=2, num_heads=2}", "teacher.epochs=1", "teacher.batch_size=64",
    "distill.epochs=1", "distill.batch_size=64", "distill.k=32",
    "export.parity_images=128", "quantize.calibration_images=64", "quantize.validation_images=200",
    "quantize.coreml.variants=[{name='int8', kind='linear', granularity='per_channel'}]",
]


AFTER_TRAINING = ("export", "quantize", "evaluate")  # the stages after distill that the zoo runs

# the bench trains longer than the test, so that INT8 agreement is measured on models that predict something
TRAINED = ("data.subset=3000", "data.test_subset=1000", "teacher.epochs=3", "distill.epochs=3")


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def overrides(name: str, output_dir: Path) -> list[str]:
    model, student, img_size = ZOO[name]
    return [*SETTINGS, f"run.output_dir='{output_dir}'", f"run.name='{name}'", f"data.img_size={img_size}",
            f"student.model='{model}'", f"student.overrides={_toml(student)}"]


def run_model(name: str, output_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    """One zoo model through the pipeline up to evaluate (`extra`: more --set overrides); its report.json."""
    return run(None, [*overrides(name, output_dir), *extra], until="evaluate", quiet=True)


def row(name: str, report: dict) -> dict:
    """What the models table shows for one zoo model."""
    distill = report["stages"]["distill"]["summary"]
    export = report["stages"]["export"]["summary"]["artifacts"]
    evaluation = report["evaluation"]
    return {"name": name, "model": ZOO[name][0], "params": distill["params"],
            "family": distill.get("families", {}).get("student"),
            "matched_units": distill.get("matched_units", []),
            "student_top1": evaluation["student"]["top1"],
            "parity": {key: a["parity"] for key, a in export.items()},
            "artifacts": {r["artifact"]: {k: r.get(k) for k in ("runtime", "precision", "evaluation", "top1",
                                                                   "delta_top1", "agreement", "reason")}
                          for r in evaluation["artifacts"]}}


def table(rows: list[dict]) -> str:
    lines = ["| model | family | params | units matched (student -> teacher) | top-1 % | ONNX / OpenVINO / Core ML / "
             "ExecuTorch / LiteRT parity, max abs diff | INT8 ORT static / dynamic / OpenVINO / Core ML / ExecuTorch / "
             "LiteRT: top-1 change (agreement) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| `{r['model']}` | | | | | refused: {r['refused']} | |")
            continue
        units = ", ".join(f"{s}->{t}" for s, t in r["matched_units"])
        parity = " / ".join(f"{r['parity'][k]['max_abs_diff']:.1e}" if k in r["parity"] else "-"
                            for k in ("onnx", "openvino", "coreml", "executorch", "litert"))
        int8 = " / ".join(_agreement(r["artifacts"].get(k)) for k in ("onnx_int8_static", "onnx_int8_dynamic",
                                                                         "openvino_int8", "coreml_int8",
                                                                         "executorch_int8", "litert_int8"))
        lines.append(f"| `{r['model']}` | {r['family']} | {r['params'] / 1e6:.2f} M | {units} "
                     f"| {r['student_top1']:.1f} | {parity} | {int8} |")
    return "\n".join(lines)


def _agreement(artifact: dict | None) -> str:
    if artifact is None:
        return "-"
    if artifact.get("top1") is None:
        return "not simulated"
    return f"{artifact['delta_top1']:+.1f} ({100 * artifact['agreement']:.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_zoo.json")
    parser.add_argument("--only", nargs="*", choices=sorted(ZOO), help="run these zoo models only (the other rows "
                        "of an existing --out file are kept)")
    args = parser.parse_args()
    previous = read_json(args.out)["models"] if args.only and args.out.exists() else []
    rows = {r["name"]: r for r in previous}
    host = {"cpu": cpu_name(), "flags": cpu_flags(), **int8_instructions()}
    with tempfile.TemporaryDirectory(prefix="manifold-edge-zoo-") as tmp:
        for name in args.only or ZOO:
            start, measured = time.perf_counter(), {"commit": commit(), "date": datetime.now(UTC).isoformat(
                timespec="seconds"), "load_before": load()}
            try:
                report = run_model(name, Path(tmp), TRAINED)
                rows[name] = row(name, report)
                walls = {stage: entry["wall_s"] for stage, entry in report["stages"].items()}
                rows[name]["stages_s"] = walls  # a stage reused from the cache (the shared teacher): its first wall
                rows[name]["after_training_s"] = round(sum(walls.get(s, 0.0) for s in AFTER_TRAINING), 1)
            except UserError as exc:  # a model a runtime refuses is a row of the table, not the end of the run
                rows[name] = {"name": name, "model": ZOO[name][0], "refused": str(exc)}
            rows[name]["wall_s"] = round(time.perf_counter() - start, 1)
            rows[name]["measured"] = {**measured, "load_after": load()}  # rows of --only runs differ in these
            print(f"{name}: {rows[name]['wall_s']} s", flush=True)
            ordered = [rows[n] for n in ZOO if n in rows]
            write_json(args.out, {"host": host, "command": " ".join(sys.argv), "models": ordered})
    print(table(ordered))


if __name__ == "__main__":
    main()
