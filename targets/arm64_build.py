"""Build the emulated arm64 device's root (targets/arm64.py), as root, on a Debian/Ubuntu host with
qemu-user-static, debootstrap, binfmt-support and g++-aarch64-linux-gnu: `make arm64`, which runs
`python -m targets.arm64_build --root ...`.

Into ~/.cache/manifold-edge/arm64 ($MANIFOLD_EDGE_ARM64_ROOT): debootstrap's first stage on this host, its second
stage inside the root (arm64 binaries run through binfmt_misc and qemu-user-static), then the aarch64 wheels
of ONNX Runtime, LiteRT and numpy at the versions this environment has, installed by this host's pip with
--platform (no emulated pip), and ExecuTorch's runtime libraries from its aarch64 wheel with a runner
cross-compiled against them (targets/arm64_executorch_runner.cpp). The stamp, written last, records what was
installed; run again, it only checks the versions (and reinstalls the runtimes when they moved).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

from pipeline.core.errors import UserError
from targets.arm64 import (
    DEFAULT_ROOT,
    ET_RUNNER,
    PYTHON,
    QEMU,
    ROOT_ENV,
    RUNTIMES,
    STAMP,
    chroot,
    read_stamp,
    root_path,
)

SITE = "usr/local/lib/python3.11/dist-packages"  # on Debian's python3.11 path
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PACKAGES = (*RUNTIMES.values(), "numpy")
# ExecuTorch's Python bindings import torch, and the only aarch64 torch wheel on the index (2.14.1) is a CUDA build
# that needs libcudart; its wheel's runtime libraries need no torch, so the root gets those (not the Python package)
# and a runner cross-compiled against them.
ET_HOME = "opt/executorch"  # in the root: the wheel's lib/ (the runner's rpath)
ET_SOURCE = Path(__file__).with_name("arm64_executorch_runner.cpp")
ET_LIBS = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized", "executorch_kernels_quantized")
CXX = "aarch64-linux-gnu-g++"


def host_versions() -> dict[str, str]:
    """The versions of the runtimes (and numpy) in this environment: the root gets the same, so that the
    x86 and arm64 builds compared are one release."""
    try:
        return {p: version(p) for p in PACKAGES}
    except PackageNotFoundError as exc:
        raise UserError(f"{exc.name} is not installed here, so its version for the arm64 root is unknown: "
                        "`make setup` first") from None


def constraints() -> str:
    """name==version of every distribution in this environment: the wheels' own dependencies (protobuf,
    flatbuffers, ml_dtypes...) resolve to the versions the x86 runtimes run with, where this environment has them."""
    pins = {d.metadata["Name"].lower(): d.version for d in distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={v}\n" for name, v in sorted(pins.items()) if "+" not in v)


def step(argv: list[str], what: str, **kwargs) -> None:
    print(f"arm64 root: {what}", flush=True)
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, **kwargs)
    if proc.returncode != 0:
        raise UserError(f"building the arm64 root: {what} failed with status {proc.returncode} (its output is "
                        f"{'above' if proc.stdout is None else repr(proc.stdout[-300:])}); fix that and run "
                        "`make arm64` again")


def enable_binfmt() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered, so that debootstrap's second stage runs arm64 binaries."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        step(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], "mounting binfmt_misc")
    if not (misc / "qemu-aarch64").exists():
        step(["update-binfmts", "--enable", "qemu-aarch64"], "registering qemu-aarch64 with binfmt_misc")


# pip's options for the cp311 aarch64 wheels that bookworm (glibc 2.36) can load
AARCH64 = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:",
           *[a for minor in range(17, 37) for a in ("--platform", f"manylinux_2_{minor}_aarch64")],
           "--platform", "manylinux2014_aarch64"]


def install_wheels(target: Path, packages: dict[str, str]) -> None:
    """The aarch64 wheels, by this host's pip, into the root's dist-packages."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
        pins.write(constraints())
        pins.flush()
        step([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), *AARCH64, "--no-compile",
              "--constraint", pins.name, *(f"{p}=={v}" for p, v in packages.items())], "installing the aarch64 wheels")


def install_executorch(work: Path, version: str) -> None:
    """The runtime libraries of ExecuTorch's aarch64 wheel into the root's /opt/executorch/lib, and the runner
    cross-compiled against them and the wheel's headers."""
    if not ET_SOURCE.is_file():
        raise UserError(f"{ET_SOURCE} is missing: build the arm64 root from the project's source tree")
    with tempfile.TemporaryDirectory() as tmp:
        step([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, *AARCH64,
              f"executorch=={version}"], "downloading ExecuTorch's aarch64 wheel (its runtime libraries)")
        with zipfile.ZipFile(next(Path(tmp).glob("executorch-*.whl"))) as wheel:
            wheel.extractall(tmp, [n for n in wheel.namelist()
                                   if n.startswith(("executorch/lib/", "executorch/include/"))])
        lib, include = work / ET_HOME / "lib", Path(tmp, "executorch", "include")
        shutil.rmtree(work / ET_HOME, ignore_errors=True)
        shutil.copytree(Path(tmp, "executorch", "lib"), lib)
        c10 = include / "executorch/runtime/core/portable_type/c10"  # the headers include it as <c10/...>
        step([CXX, "-std=c++17", "-O2", "-Wno-deprecated-declarations", "-I", str(include), "-I", str(c10),
              "-DC10_USING_CUSTOM_GENERATED_MACROS", str(ET_SOURCE), "-L", str(lib), "-Wl,--no-as-needed",
              *(f"-l{name}" for name in ET_LIBS), "-Wl,--as-needed", f"-Wl,-rpath,/{ET_HOME}/lib",
              "-o", str(work / ET_RUNNER.lstrip("/"))], "cross-compiling the ExecuTorch runner")


def unmount_below(root: Path) -> None:
    """Unmount anything debootstrap left mounted inside root (its second stage mounts /proc and /sys)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def folder_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def build(root: Path, mirror: str = MIRROR) -> dict:
    """Build the root (or bring its wheels to this environment's versions); returns its stamp."""
    packages = host_versions()
    stamp = read_stamp(root)
    if stamp and stamp["packages"] == packages:
        print(f"arm64 root: {root} is up to date ({', '.join(f'{p} {v}' for p, v in packages.items())})")
        return stamp
    if os.geteuid() != 0:
        raise UserError("building the arm64 root needs root (debootstrap, chroot, binfmt_misc): sudo make arm64")
    if missing := [tool for tool in ("debootstrap", "update-binfmts", QEMU, CXX) if shutil.which(tool) is None]:
        raise UserError(f"{', '.join(missing)} not found: apt-get install qemu-user-static debootstrap binfmt-support "
                        "g++-aarch64-linux-gnu")
    start = time.monotonic()
    wheels = {p: v for p, v in packages.items() if p != "executorch"}
    if stamp:  # the base system is there: only the runtimes change
        (root / STAMP).unlink()
        shutil.rmtree(root / SITE, ignore_errors=True)
        work = root
    else:
        enable_binfmt()
        work = root.with_name(root.name + ".partial")
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        step(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", "--include=python3.11", SUITE,
              str(work), mirror], f"debootstrap's first stage ({SUITE} arm64 from {mirror})")
        shutil.copy(QEMU, work / QEMU.lstrip("/"))
        try:
            step([chroot(), str(work), "/debootstrap/debootstrap", "--second-stage"],
                 "debootstrap's second stage, emulated")
        finally:
            unmount_below(work)
    install_wheels(work / SITE, wheels)
    install_executorch(work, packages["executorch"])
    step([chroot(), str(work), QEMU, PYTHON, "-c", "import numpy, onnxruntime, ai_edge_litert.interpreter"],
         "importing the runtimes inside the root", env={"PATH": "/usr/bin:/bin", "QEMU_CPU": "cortex-a76"},
         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # cpuinfo's complaints only if it fails
    runner = subprocess.run([chroot(), str(work), QEMU, ET_RUNNER], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    if "usage:" not in runner.stderr:  # it loaded its libraries and ran
        raise UserError(f"building the arm64 root: the ExecuTorch runner does not run ({runner.stderr[-300:]!r})")
    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    stamp = {"suite": SUITE, "mirror": mirror, "python": PYTHON, "packages": packages, "qemu": qemu,
             "build_s": round(time.monotonic() - start, 1),
             "bytes": folder_bytes(work), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (work / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    if work != root:
        shutil.rmtree(root, ignore_errors=True)
        work.rename(root)
    print(f"arm64 root: {root} built in {stamp['build_s']:.0f} s, {stamp['bytes'] / 1e6:.0f} MB")
    return stamp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m targets.arm64_build",
                                     description="build the emulated arm64 device's root (once; again only when "
                                                 "the runtimes' versions change)")
    parser.add_argument("--root", type=Path, default=None, help=f"default: ${ROOT_ENV} or {DEFAULT_ROOT}")
    parser.add_argument("--mirror", default=MIRROR, help="Debian mirror for debootstrap")
    args = parser.parse_args(argv)
    try:
        build((args.root or root_path()).expanduser().absolute(), args.mirror)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
