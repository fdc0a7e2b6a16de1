"""Timing: every runtime imported first, then each model loaded and warmed up in a memory window of its own,
then all models timed interleaved at batch 1 (round-robin, `block` runs of each per turn, until every median's
interval is narrow enough, or the runs or seconds run out), then per model its throughput at a larger batch and,
with --profile, its per-layer profile."""
from __future__ import annotations

import argparse
import os
import platform
import time

from targets.agent import host
from targets.agent.adapter import adapter, load
from targets.agent.errors import AgentError, blame, file_name
from targets.agent.layers import profile_layers
from targets.agent.stats import half_width, summary


def interleave(calls: list, runs: int, min_runs: int, block: int, seconds: float, rel: float,
               clock=time.perf_counter, cpu_clock=time.process_time) -> dict:
    """Time zero-argument calls round-robin, `block` runs of each per turn, so that every model sees the
    same host conditions. Stops after a whole round once every call's median interval is within `rel` of
    its median (rel > 0; checked from min_runs runs on, then at every ~10% more runs), at `runs` runs per call, or
    after `seconds` x len(calls) seconds (at least one round). Wall ms per run; CPU ms per run as each block's
    mean (one value per block): the process CPU clock sums every thread's time, and read while a runtime's
    threads spin it cost 0.1-1.1 ms per read on a 2-core host, 45% of a phone target's timing when read around
    every run; the schedule is the call index of each block in order."""
    wall: list[list[float]] = [[] for _ in calls]
    cpu: list[list[float]] = [[] for _ in calls]
    schedule: list[int] = []
    min_runs = min(min_runs, runs)
    deadline = clock() + seconds * len(calls)
    next_check = min_runs
    while True:
        size = min(block, runs - len(wall[0]))
        for i, call in enumerate(calls):
            schedule.append(i)
            c0 = cpu_clock()
            for _ in range(size):
                t0 = clock()
                call()
                wall[i].append((clock() - t0) * 1000)
            cpu[i].append((cpu_clock() - c0) * 1000 / size)
        done = len(wall[0])
        if done >= runs:
            stopped = "runs"
            break
        if rel > 0 and done >= next_check:
            widths = [half_width(w) for w in wall]
            if all(w is not None and w <= rel for w in widths):
                stopped = "interval"
                break
            next_check = max(done + 1, int(done * 1.1))
        if clock() >= deadline:
            stopped = "max_seconds"
            break
    return {"wall_ms": wall, "cpu_ms": cpu, "schedule": schedule, "block": block, "stopped": stopped}


def import_runtimes(paths: list[str], runtimes: list[str]) -> dict[str, float]:
    """Import every runtime before any model loads, so that a model's memory is its own; the MB each
    import added. A runtime that is missing is blamed on its first model. A runtime whose adapter names no
    module (Core ML's coremltools) is imported with its model, and counted in it."""
    added = {}
    for path, runtime in zip(paths, runtimes):
        cls = adapter(runtime)
        if cls.module is None or runtime in added:
            continue
        before = host.window_start()
        with blame(path):
            cls.import_runtime()
        added[runtime] = max(host.rss() - before, 0.0)
    return added


def measure(args: argparse.Namespace) -> tuple[list[dict], list[int]]:
    """Load every model (its own memory window), time them interleaved, then per model throughput and
    the optional profile. Returns one result per model and the block schedule."""
    import numpy as np

    for path in args.model:
        if not os.path.exists(path):
            raise AgentError("bad_model", f"{path}: no such file on the device", file_name(path))
    baseline = host.rss()
    runtime_mb = import_runtimes(args.model, args.runtimes)
    load_before = host.load()
    base_threads = host.thread_count()
    models = []
    for path, runtime in zip(args.model, args.runtimes):
        model_args = argparse.Namespace(**{**vars(args), "model": path, "runtime": runtime})
        before = host.window_start()
        threads_before = host.thread_count()
        start = time.perf_counter()
        with blame(path):
            runner = load(model_args)
            load_ms = (time.perf_counter() - start) * 1000
            shape = runner.input_shape(1, args.input_size)
            rng = np.random.default_rng(0)
            x = rng.uniform(0, 1, shape).astype(np.float32)
            if runner.pixels:
                x *= 255
            for _ in range(args.warmup):
                runner(x)
        added = max(host.rss() - before, 0.0)
        threads = None if base_threads is None else base_threads + host.thread_count() - threads_before
        models.append({"args": model_args, "runner": runner, "x": x, "rng": rng, "shape": shape,
                       "load_ms": load_ms, "rss": added, "threads": threads})
    timing = interleave([(lambda m=m: m["runner"](m["x"])) for m in models], args.runs, args.min_runs,
                        args.block, args.max_seconds, args.rel_interval)
    host_load = host.load_info(load_before, host.load(), args.threads)
    machine = {"system": platform.system(), "machine": platform.machine(), "cpu": host.cpu_name(),
               "cores": host.usable_cores(), "python": platform.python_version()}
    names = [file_name(m["args"].model) for m in models]
    results = []
    for i, m in enumerate(models):
        wall, cpu = timing["wall_ms"][i], timing["cpu_ms"][i]
        runner = m["runner"]
        result = {
            "ok": True, "runtime": runner.name, "runtime_version": runner.version,
            "model": names[i], "model_bytes": host.model_bytes(m["args"].model),
            "input_shape": m["shape"], "threads": args.threads, "load_ms": m["load_ms"], "warmup_runs": args.warmup,
            "runs": len(wall), "latency_ms": summary(wall),
            "cpu_ms": {k: v for k, v in summary(cpu).items() if k in ("p50", "mean", "p50_interval")},
            "timing": {"interleaved_with": [n for j, n in enumerate(names) if j != i], "block": timing["block"],
                       "stopped": timing["stopped"], "rel_interval": args.rel_interval, "min_runs": args.min_runs},
        }
        result["throughput"] = throughput(runner, m["args"], m["rng"]) if args.throughput_batch > 1 else \
            {"batch": 1, "images_per_s": 1000 / result["latency_ms"]["mean"]}
        result["process_threads"] = m["threads"]
        result["runtime_threads"] = runner.threads  # as the runtime reports it, where it does
        result["model_rss_mb"] = m["rss"]
        # what a process running only this model would peak at: the interpreter, its runtime and the model
        result["peak_rss_mb"] = baseline + runtime_mb.get(runner.name, 0.0) + m["rss"]
        result["host"] = machine
        result["host_load"] = host_load
        result["warnings"] = warnings(result)
        if args.raw:
            result["samples"] = {"wall_ms": wall, "cpu_ms": cpu}
        if args.profile and runner.profiled:
            result["profile"] = profile_layers(m["args"], m["x"])
        results.append(result)
    return results, timing["schedule"]


def warnings(result: dict) -> list[str]:
    out = []
    load, width = result["host_load"], result["latency_ms"]["half_width"]
    if load.get("oversubscribed"):
        out.append(f"{load['threads']} thread(s) but only {load['free_cores']:g} of {load['cores']} cores free "
                   f"(1-minute load {load['before'][0]:g} before timing): the timings share the CPU with other work")
    if result["timing"]["rel_interval"] > 0 and (width is None or width > result["timing"]["rel_interval"]):
        shown = "no interval (too few runs)" if width is None else f"+-{100 * width:.1f}%"
        out.append(f"the median's 95% interval is {shown}, wider than +-{100 * result['timing']['rel_interval']:g}%"
                   f" (timing stopped at {result['timing']['stopped'].replace('_', ' ')})")
    return out


def throughput(runner, args: argparse.Namespace, rng) -> dict:
    """Images per second at args.throughput_batch (or the largest batch the model is planned for, where the
    runner says so), back-to-back calls for up to 2 s (at least 5)."""
    import numpy as np

    if runner.pixels:  # such models here take one image: throughput is back-to-back batch-1 calls
        return {"batch": 1, "images_per_s": None}
    shape = runner.input_shape(args.throughput_batch, args.input_size)
    try:
        x = rng.uniform(0, 1, shape).astype(np.float32)
        runner(x)
    except Exception as exc:  # a model exported with a fixed batch of 1
        return {"batch": shape[0], "images_per_s": None, "error": str(exc).splitlines()[0][:200]}
    count, start = 0, time.perf_counter()
    while count < 5 or (time.perf_counter() - start < min(args.max_seconds, 2.0) and count < 200):
        runner(x)
        count += 1
    return {"batch": shape[0], "images_per_s": count * shape[0] / (time.perf_counter() - start)}
