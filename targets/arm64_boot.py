"""Run inside the arm64 root (targets/arm64.py), in the emulated process: write /proc/cpuinfo and the CPU files of
/sys as Linux would show the emulated core, then run the agent (`python3.11 arm64_boot.py agent.pyz ARGS...`: runpy
runs a zipapp's __main__ as it runs a script), or, given nothing to run, print the core's MIDR and features as JSON
(before a native program runs).

The root has no /proc or /sys mounted (the host's x86 /proc/cpuinfo crashes qemu under ONNX Runtime's cpuinfo),
and without them cpuinfo fails to initialise: XNNPACK then refuses to start and LiteRT runs its built-in kernels,
not the ones a phone runs. So the files are plain files in the root, written for the core of this call: its
MIDR_EL1 (read with `mrs`, which QEMU answers for the emulated core) and the features of its auxiliary vector.
Standard library only.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import runpy
import sys

# Linux arm64 hwcap names, by bit of AT_HWCAP and AT_HWCAP2 (arch/arm64/kernel/cpuinfo.c).
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
          "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 "
          "smef32f32 smefa64 wfxt").split()
MRS_MIDR = bytes.fromhex("000038d5" "c0035fd6")  # mrs x0, midr_el1; ret


def midr() -> int:
    """MIDR_EL1 of the emulated core, from a two-instruction function in an executable page."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(MRS_MIDR)
    return ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()


def features() -> list[str]:
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    caps, caps2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    return [n for i, n in enumerate(HWCAP) if caps >> i & 1] + [n for i, n in enumerate(HWCAP2) if caps2 >> i & 1]


def describe() -> dict:
    """/proc/cpuinfo (one block per usable host core, each the emulated core), /sys's CPU lists and each CPU's
    midr_el1 (ExecuTorch reads it); returns the MIDR and features."""
    m, names, cores = midr(), features(), len(os.sched_getaffinity(0))
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(names)}\nCPU implementer\t: {m >> 24 & 0xff:#04x}\n"
             f"CPU architecture: 8\nCPU variant\t: {m >> 20 & 0xf:#x}\nCPU part\t: {m >> 4 & 0xfff:#05x}\n"
             f"CPU revision\t: {m & 0xf}\n\n")
    with open("/proc/cpuinfo", "w") as f:
        f.write("".join(f"processor\t: {i}\n{block}" for i in range(cores)))
    os.makedirs("/sys/devices/system/cpu", exist_ok=True)
    for name in ("possible", "present", "online"):
        with open(f"/sys/devices/system/cpu/{name}", "w") as f:
            f.write(f"0-{cores - 1}\n" if cores > 1 else "0\n")
    for i in range(cores):
        os.makedirs(f"/sys/devices/system/cpu/cpu{i}/regs/identification", exist_ok=True)
        with open(f"/sys/devices/system/cpu/cpu{i}/regs/identification/midr_el1", "w") as f:
            f.write(f"{m:#018x}\n")
    return {"midr": f"{m:#x}", "features": names}


if __name__ == "__main__":
    core = describe()
    if len(sys.argv) == 1:
        print(json.dumps(core))
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
