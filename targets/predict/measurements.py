"""The public on-device measurements a latency predictor learns from: every inference time in the
`qai-hub-models` package's `models/<id>/perf.yaml` files (Qualcomm AI Hub jobs on real phones and boards),
one row per (model, component, precision, device, runtime), with the job id as its source.

    .venv/bin/python -m targets.predict.measurements [--wheel qai_hub_models-0.65.0-py3-none-any.whl]
                                                     [--out targets/predict/measurements.csv]

It also writes numerics.csv beside it: the package's numerics.yaml files (on-device vs torch accuracy).

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

from pipeline.core.fileio import atomic_write

PACKAGE = "qai-hub-models==0.65.0"
FIELDS = ["model", "component", "precision", "device", "runtime", "inference_ms", "peak_mb_min", "peak_mb_max",
          "layers_total", "layers_npu", "layers_gpu", "layers_cpu", "compute_unit", "job_id", "source"]
OUT = Path(__file__).with_name("measurements.csv")
NUMERICS_FIELDS = ["model", "metric", "precision", "device", "runtime", "device_value", "torch_value", "samples",
                   "source"]
NUMERICS_OUT = Path(__file__).with_name("numerics.csv")


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


def numerics_of(text: str, model: str, source: str) -> list[dict]:
    """On-device vs torch accuracy in one numerics.yaml: the same images (`samples`) run on the device and in
    torch, one row per (metric, precision, device, runtime)."""
    rows = []
    for metric in (yaml.safe_load(text) or {}).get("metrics") or []:
        torch_value = metric.get("partial_torch_metric")
        for device, by_device in (metric.get("device_metric") or {}).items():
            for precision, by_precision in (by_device or {}).items():
                for runtime, m in (by_precision or {}).items():
                    if not isinstance(m, dict) or m.get("partial_metric") is None or torch_value is None:
                        continue
                    rows.append({"model": model, "metric": metric.get("metric_name"), "precision": precision,
                                 "device": device, "runtime": runtime, "device_value": float(m["partial_metric"]),
                                 "torch_value": float(torch_value), "samples": metric.get("num_partial_samples"),
                                 "source": source})
    return rows


def read_wheel(wheel: Path, file: str = "perf.yaml") -> list[dict]:
    """Every models/<id>/perf.yaml (or numerics.yaml) in the wheel as rows, sorted."""
    source = wheel.name.split("-py3")[0]
    parse = rows_of if file == "perf.yaml" else numerics_of
    rows = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[:2] == ["qai_hub_models", "models"] and parts[3] == file:
                rows += parse(archive.read(name).decode(), parts[2], source)
    return sorted(rows, key=lambda r: (r["model"], r.get("component") or r.get("metric"), r["device"], r["runtime"],
                                       r["precision"]))


def write_csv(rows: list[dict], out: Path, fields: list[str] = FIELDS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out, lambda tmp: tmp.write_text(buffer.getvalue()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {PACKAGE} wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--numerics-out", type=Path, help="default: numerics.csv beside --out")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", folder],
                           check=True)
            wheel = next(Path(folder).glob("qai_hub_models-*.whl"))
        rows, numerics = read_wheel(wheel), read_wheel(wheel, "numerics.yaml")
    write_csv(rows, args.out)
    numerics_out = args.numerics_out or args.out.with_name(NUMERICS_OUT.name)
    write_csv(numerics, numerics_out, NUMERICS_FIELDS)
    devices = {r["device"] for r in rows}
    print(f"{len(rows)} measurements of {len({r['model'] for r in rows})} models on {len(devices)} devices -> "
          f"{args.out}; {len(numerics)} device-vs-torch accuracies -> {numerics_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
