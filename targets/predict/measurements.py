"""The public on-device measurements a latency predictor learns from: every inference time in the
`qai-hub-models` package's `models/<id>/perf.yaml` files (Qualcomm AI Hub jobs on real phones and boards),
one row per (model, component, precision, device, runtime), with the job id as its source.

    .venv/bin/python -m targets.predict.measurements [--wheel qai_hub_models-0.65.0-py3-none-any.whl]
                                                     [--out targets/predict/measurements.csv]

Without --wheel it downloads the pinned wheel with pip (no dependencies: it is read as data, never imported).
"""
from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from pipeline.fileio import atomic_write

PACKAGE = "qai-hub-models==0.65.0"
FIELDS = ["model", "component", "precision", "device", "runtime", "inference_ms", "peak_mb_min", "peak_mb_max",
          "layers_total", "layers_npu", "layers_gpu", "layers_cpu", "compute_unit", "job_id", "source"]
OUT = Path(__file__).with_name("measurements.csv")


def rows_of(text: str, model: str, source: str) -> list[dict]:
    """The passed jobs with an inference time in one perf.yaml (LLM token metrics are left out)."""
    rows = []
    for precision, by_precision in ((yaml.safe_load(text) or {}).get("precisions") or {}).items():
        for component, by_component in (by_precision.get("components") or {}).items():
            for device, by_device in (by_component.get("performance_metrics") or {}).items():
                for runtime, m in (by_device or {}).items():
                    if not isinstance(m, dict) or m.get("job_status") != "Passed" or \
                            m.get("inference_time_milliseconds") is None:
                        continue
                    memory, layers = m.get("estimated_peak_memory_range_mb") or {}, m.get("layer_counts") or {}
                    rows.append({"model": model, "component": component, "precision": precision, "device": device,
                                 "runtime": runtime, "inference_ms": float(m["inference_time_milliseconds"]),
                                 "peak_mb_min": memory.get("min"), "peak_mb_max": memory.get("max"),
                                 "layers_total": layers.get("total"), "layers_npu": layers.get("npu", 0),
                                 "layers_gpu": layers.get("gpu", 0), "layers_cpu": layers.get("cpu", 0),
                                 "compute_unit": m.get("primary_compute_unit"), "job_id": m.get("job_id"),
                                 "source": source})
    return rows


def read_wheel(wheel: Path) -> list[dict]:
    """Every models/<id>/perf.yaml in the wheel, sorted by model, device, runtime, precision."""
    source = wheel.name.split("-py3")[0]
    rows = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[:2] == ["qai_hub_models", "models"] and parts[3] == "perf.yaml":
                rows += rows_of(archive.read(name).decode(), parts[2], source)
    return sorted(rows, key=lambda r: (r["model"], r["component"], r["device"], r["runtime"], r["precision"]))


def write_csv(rows: list[dict], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out, lambda tmp: tmp.write_text(buffer.getvalue()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {PACKAGE} wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", folder],
                           check=True)
            wheel = next(Path(folder).glob("qai_hub_models-*.whl"))
        rows = read_wheel(wheel)
    write_csv(rows, args.out)
    devices = {r["device"] for r in rows}
    print(f"{len(rows)} measurements of {len({r['model'] for r in rows})} models on {len(devices)} devices -> "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
