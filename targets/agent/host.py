"""What the agent reads of the device it runs on: the CPU (name, SIMD flags, Arm hwcaps), its load and usable
cores, this process's memory and threads, and a model's size on disk. Linux and Android read /proc; elsewhere
each answer degrades to what the standard library knows (None where nothing)."""
from __future__ import annotations

import os
import platform
import resource
import sys

SIMD = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
        "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "bf16")
# Linux arm64 hwcap bits (AT_HWCAP, AT_HWCAP2) of the features that pick INT8 and float kernels.
ARM_HWCAP = {"asimd": 1, "asimdhp": 10, "asimddp": 20, "sve": 22, "asimdfhm": 23}
ARM_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14, "sme": 23}


# --- the CPU --------------------------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpuinfo_flags() -> set[str] | None:
    """Every CPU flag /proc/cpuinfo lists (x86 `flags`, Arm `Features`); None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith(("flags", "Features"))
                    for flag in line.split(":", 1)[1].split()}
    except OSError:
        return None


def int8_instructions() -> dict:
    """The INT8 dot-product instructions of this host's CPU (x86 VNNI/AMX, Arm dot-product/i8mm)."""
    flags = cpuinfo_flags()
    if flags is None:
        return {"machine": platform.machine(), "known": False, "int8_dot": []}
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    return {"machine": platform.machine(), "known": True, "int8_dot": found}


def cpu_flags() -> list[str]:
    """The SIMD flags of /proc/cpuinfo that matter for these kernels (empty where it cannot be read)."""
    flags = cpuinfo_flags() or set()
    return [f for f in SIMD if f in flags]


def arm_features() -> list[str] | None:
    """The kernel's hwcaps (getauxval) by name on an aarch64 Linux; None elsewhere."""
    if platform.machine() != "aarch64" or not sys.platform.startswith("linux"):
        return None
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    caps, caps2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    return [name for name, bit in ARM_HWCAP.items() if caps >> bit & 1] + \
        [name for name, bit in ARM_HWCAP2.items() if caps2 >> bit & 1]


# --- load and cores -------------------------------------------------------------------------------------------

def load() -> list[float] | None:
    """1, 5 and 15-minute load averages (runnable threads), None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one, else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_info(before: list[float] | None, after: list[float] | None, threads: int) -> dict:
    """The host's load around the timing, and whether the threads asked for exceed the free cores
    (usable cores minus the 1-minute load before timing); threads 0 (the runtime's default) counts as all cores."""
    cores = usable_cores()
    info = {"cores": cores, "before": before, "after": after, "threads": threads or cores}
    if before is not None:
        info["free_cores"] = round(max(cores - before[0], 0.0), 2)
        info["oversubscribed"] = info["threads"] > info["free_cores"]
    return info


# --- this process: memory and threads -------------------------------------------------------------------------

def status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux/Android), e.g. VmHWM or VmRSS, in MB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss() -> float:
    """Peak resident memory of this process so far, in MB. Linux/Android: VmHWM, because ru_maxrss keeps the
    parent's high-water mark across fork+exec; macOS: ru_maxrss (bytes there)."""
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux/Android: writing 5 to clear_refs), so each model's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def window_start() -> float:
    """Start a memory window: reset the peak where the OS allows it and return the RSS now (else the peak)."""
    before = status_mb("VmRSS") if reset_peak_rss() else None
    return rss() if before is None else before


def thread_count() -> int | None:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None


# --- model files ----------------------------------------------------------------------------------------------

def sidecar(path: str) -> str:
    """The file beside a model that its runtime reads too (it may not exist): an OpenVINO IR's weights,
    foo.xml -> foo.bin; an ONNX file's external data, foo.onnx -> foo.onnx.data."""
    return path[:-4] + ".bin" if path.endswith(".xml") else path + ".data"


def model_bytes(path: str) -> int:
    """Size on disk: a folder's files (a Core ML .mlpackage), or the file and its sidecar."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    extra = sidecar(path)
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.isfile(extra) else 0)
