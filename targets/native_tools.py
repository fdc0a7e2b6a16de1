"""The phone's own benchmark tools for ExecuTorch and LiteRT (they have no Python runtime on Android):
LiteRT's `benchmark_model` and ExecuTorch's `executor_runner`, driven over adb. Their command lines, what
their output says, and one timing result in the agent's shape per model.

Neither tool prints single runs: each call prints the mean of its runs. So a model is timed in blocks (one
tool call of `runs / blocks` runs each, the models of one call alternating block by block, as the agent
interleaves), the block means are the samples, and the first block of each model is dropped as warm-up
(executor_runner has no warm-up flag).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NATIVE_TOOLS = {
    "litert": ("benchmark_model", "get the android_aarch64 benchmark_model binary from LiteRT's releases (or build "
                                  "//tflite/tools/benchmark:benchmark_model for android_arm64)"),
    "executorch": ("executor_runner", "build ExecuTorch's executor_runner with XNNPACK for Android (cmake "
                                      "-DANDROID_ABI=arm64-v8a -DEXECUTORCH_BUILD_XNNPACK=ON; ExecuTorch's Android "
                                      "docs)"),
}
BLOCKS = 6  # tool calls per model: the first is warm-up, the other five are the samples
NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"


@dataclass
class ToolRun:
    """What one call of a tool printed: the mean of its runs, and what else it says."""

    runs: int
    mean_ms: float
    init_ms: float | None = None
    memory_mb: float | None = None  # benchmark_model: peak footprint; executor_runner: planned buffers


def tool_argv(runtime: str, tool: str, model: str, threads: int, runs: int) -> list[str]:
    """The device-side command line for one block of `runs` timed runs of `model`."""
    if runtime == "litert":  # exactly num_runs: no minimum seconds, no warm-up (the first block is dropped)
        return [tool, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}", "--min_secs=0",
                "--warmup_runs=0", "--warmup_min_secs=0", "--use_xnnpack=true", "--report_peak_memory_footprint=true"]
    return [tool, f"--model_path={model}", f"--num_executions={runs}", f"--cpu_threads={threads}"]


def parse_benchmark_model(text: str) -> ToolRun:
    """LiteRT benchmark_model: "count=50 first=... avg=..." for the timed runs, "Inference timings in us:
    Init: ..." and the peak memory footprint."""
    timings = re.search(r"Inference timings in us: Init: " + NUMBER + r", First inference: " + NUMBER +
                        r".*Inference \(avg\): " + NUMBER, text)
    counts = re.findall(r"count=([0-9]+) .*?avg=" + NUMBER, text)
    if not timings or not counts:
        raise ValueError("no 'Inference timings in us' line")
    memory = re.search(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + NUMBER, text) or \
        re.search(r"[Pp]eak memory footprint \(MB\): init=[0-9.e+-]+ overall=" + NUMBER, text)
    return ToolRun(runs=int(counts[-1][0]), mean_ms=float(timings.group(3)) / 1000,
                   init_ms=float(timings.group(1)) / 1000, memory_mb=float(memory.group(1)) if memory else None)


def parse_executor_runner(text: str) -> ToolRun:
    """ExecuTorch executor_runner: "Model executed successfully N time(s) in X ms." (the total of N runs)
    and its "Setting up planned buffer i, size N." lines."""
    done = re.search(r"Model executed successfully ([0-9]+) time\(s\) in " + NUMBER + " ms", text)
    if not done:
        if "Model executed successfully" in text:
            raise ValueError("this executor_runner prints no time: build one from ExecuTorch 0.6 or later")
        raise ValueError("no 'Model executed successfully' line")
    planned = sum(int(size) for size in re.findall(r"Setting up planned buffer [0-9]+, size ([0-9]+)", text))
    runs = int(done.group(1))
    return ToolRun(runs=runs, mean_ms=float(done.group(2)) / max(runs, 1),
                   memory_mb=planned / 2**20 if planned else None)


PARSERS = {"litert": parse_benchmark_model, "executorch": parse_executor_runner}


def result(runtime: str, name: str, model_bytes: int, blocks: list[ToolRun], others: list[str], threads: int,
           rel_interval: float, host: dict) -> dict:
    """One model's timing in the agent's result shape (targets/agent/schedule.py), from its blocks (the first
    dropped)."""
    from targets.agent.stats import summary

    tool = NATIVE_TOOLS[runtime][0]
    timed = blocks[1:] or blocks
    means = [b.mean_ms for b in timed]
    memory = max((b.memory_mb for b in blocks if b.memory_mb is not None), default=None)
    memory_mb = memory if runtime == "litert" or memory is None else memory + model_bytes / 2**20
    latency = summary(means)
    return {
        "ok": True, "runtime": runtime, "runtime_version": f"{tool} (native, on the device)", "model": name,
        "model_bytes": model_bytes, "input_shape": None, "threads": threads, "runtime_threads": threads,
        "load_ms": blocks[0].init_ms if blocks[0].init_ms is not None else 0.0, "warmup_runs": blocks[0].runs,
        "runs": sum(b.runs for b in timed), "latency_ms": latency,
        "timing": {"interleaved_with": others, "block": timed[0].runs, "stopped": "runs", "rel_interval": rel_interval,
                   "samples": f"block means: {tool} prints the mean of each call's runs, not single runs"},
        "throughput": {"batch": 1, "images_per_s": 1000 / latency["mean"]},
        "model_rss_mb": memory_mb if memory_mb is not None else model_bytes / 2**20,
        "memory_basis": ("benchmark_model's peak memory footprint" if runtime == "litert" else
                         "the program's planned buffers plus its file" if memory is not None else
                         "the model file only (the tool printed no memory figure)"),
        "host": host, "host_load": None, "warnings": [],
    }
