"""Devices that run the benchmark agent (targets/agent/, shipped as one file, agent.pyz: targets/agent/bundle.py):
this host, an ssh board or Mac, an adb phone (targets/adb.py), an emulated arm64 core (targets/arm64.py: accuracy
only).

Every remote device copies the agent and the model files to a fresh temp folder on the device, runs
`<python> agent.pyz MODEL [MODEL...] ARGS...` there (several models of one target in one call, of one
runtime or several, timed interleaved; their file names must differ), reads the JSON object it prints
and removes the folder; this host runs the zipapp where it is built. ExecuTorch and LiteRT on an adb phone
are timed by their own native tools instead (targets/native_tools.py), apart from the call's other models.
Commands are argument lists (never shell=True); the one string a remote shell sees is built with
shlex.quote on every piece, and files are copied into a folder we name, so no file name, host or path
can run as code.
"""
from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from targets.agent.bundle import zipapp_file
from targets.agent.host import sidecar
from targets.profiles import TargetProfile

AGENT_KINDS = {"runtime_missing", "needs_macos", "bad_model"}  # agent kinds kept as they are
CONNECT_TIMEOUT_S = 10
SETUP_TIMEOUT_S = 30.0  # making and removing the remote temp folder, checking the device
TEMP_PREFIX = "manifold-edge."
MISSING_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([^']+)'")


class DeviceError(Exception):
    """A device could not give a result; kind is one of unreachable, runtime_missing, timeout,
    agent_failed, needs_macos, bad_model, tool_missing. model: the file name of the model it failed on,
    where the failure is one model's."""

    def __init__(self, kind: str, message: str, model: str | None = None):
        super().__init__(re.sub(r"\s*\n\s*", " ", message.strip()))
        self.kind, self.model = kind, model


class Device(Protocol):
    connection: str  # local | ssh | adb | arm64-emulated
    label: str       # proxy (this host stands in for the device) | measured | emulated (accuracy only)

    def check(self) -> None: ...

    def run_agent(self, model: Path | Sequence[Path], agent_args: list[str], timeout: float) -> dict: ...


def as_list(model: Path | Sequence[Path]) -> list[Path]:
    return [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]


def names_of(models: list[Path]) -> str:
    return ", ".join(m.name for m in models)


def model_files(path: Path) -> list[Path]:
    """The model and the sidecars its runtime reads: foo.xml + foo.bin, foo.onnx + foo.onnx.data."""
    path = Path(path)
    if not path.exists():
        raise DeviceError("bad_model", f"{path}: no such model file; run the export stage first")
    if path.is_dir():
        return [path]
    extra = Path(sidecar(str(path)))
    return [path, extra] if extra.is_file() else [path]


def make_device(profile: TargetProfile, name: str) -> Device:
    """The device a target profile reaches."""
    if profile.connection == "ssh":
        return SshDevice(profile, name)
    if profile.connection == "adb":
        from targets.adb import AdbDevice  # it builds on this module

        return AdbDevice(profile, name)
    if profile.connection == "arm64-emulated":
        from targets.arm64 import Arm64Device  # it builds on this module

        return Arm64Device(profile, name)
    return LocalDevice(profile, name)


def files_for(target: str, model: Path) -> list[Path]:
    try:
        return model_files(model)
    except DeviceError as exc:
        raise DeviceError(exc.kind, f"{target}: {exc}", model.name) from None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_command(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run argv, raising DeviceError('timeout', ...) when it takes longer than timeout seconds."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeviceError("timeout", f"{what} took longer than {timeout:g} s") from None


def agent_result(target: str, name: str, python: str, proc: subprocess.CompletedProcess) -> dict:
    """The agent's JSON object if it is ok, else a DeviceError with the agent's kind and message."""
    try:
        result = json.loads(last_line(proc.stdout))
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        if proc.returncode == 127:
            raise DeviceError("runtime_missing", f"{target}: no Python at {python} on the device "
                                                 f"({last_line(proc.stderr)}); set python in [targets.{name}]")
        raise DeviceError("agent_failed", f"{target}: the agent exited with status {proc.returncode} and no "
                                          f"result: {last_line(proc.stderr) or 'no output'}; run the agent (agent.pyz, "
                                          "`python -m targets.agent.bundle` writes it) by hand on the device to "
                                          "see why")
    if result.get("ok"):
        return result
    kind, error = result.get("kind"), str(result.get("error", "no message"))
    if missing := MISSING_MODULE.match(error):  # numpy (needed by the agent itself), or a runtime's dependency
        package = missing.group(1).split(".")[0]
        raise DeviceError("runtime_missing", f"{target}: the {package} Python package is not installed for "
                                             f"{python} on the device; pip install {package} there",
                          result.get("model"))
    if kind == "needs_macos":
        error += "; benchmark Core ML on a Mac (connection = 'ssh' with a Mac's host)"
    raise DeviceError(kind if kind in AGENT_KINDS else "agent_failed", f"{target}: {error}", result.get("model"))


class Deadline:
    """Seconds left of one overall timeout (at least one, so a late step still gets to fail cleanly)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.end - time.monotonic(), 1.0)


class LocalDevice:
    """This host, running the agent with this interpreter in its own process (its own peak RSS and threads)."""

    connection = "local"

    def __init__(self, profile: TargetProfile, name: str):
        self.profile, self.name = profile, name
        measured = profile.runtime == "coreml" and sys.platform == "darwin"
        self.label = "measured" if measured else "proxy"

    def check(self) -> None:
        """This host is always there."""

    def run_agent(self, model: Path | Sequence[Path], agent_args: list[str], timeout: float) -> dict:
        target = f"target '{self.name}' (this host)"
        models = as_list(model)
        for m in models:
            files_for(target, m)
        try:
            proc = run_command([sys.executable, str(zipapp_file()), *(str(m.absolute()) for m in models),
                                *agent_args],
                               timeout, f"the benchmark of {names_of(models)}")
        except DeviceError as exc:
            raise DeviceError(exc.kind, f"{target}: {exc}; raise timeout_s in [targets.{self.name}]") from None
        return agent_result(target, self.name, sys.executable, proc)


class RemoteDevice:
    """What ssh and adb devices share: temp folder, copy, run, always clean up."""

    connection = ""
    label = "measured"

    def __init__(self, profile: TargetProfile, name: str):
        self.profile, self.name = profile, name

    @property
    def target(self) -> str:
        return f"target '{self.name}' ({self.where})"

    @property
    def where(self) -> str:
        raise NotImplementedError

    def shell_command(self, argv: list[str]) -> list[str]:
        """The local command that runs argv on the device."""
        raise NotImplementedError

    def copy_command(self, files: list[Path], remote_dir: str) -> list[str]:
        """The local command that copies files into the folder remote_dir on the device."""
        raise NotImplementedError

    def unreachable(self, proc: subprocess.CompletedProcess) -> DeviceError | None:
        """The error to raise when proc failed because the device could not be reached, else None."""
        raise NotImplementedError

    def run(self, argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
        try:
            proc = run_command(argv, timeout, what)
        except DeviceError as exc:
            raise DeviceError(exc.kind, f"{self.target}: {exc}; check the device, or raise timeout_s "
                                        f"in [targets.{self.name}]") from None
        if (error := self.unreachable(proc)) is not None:
            raise error
        return proc

    def make_temp_dir(self) -> str:
        base = self.profile.remote_dir.rstrip("/")
        proc = self.run(self.shell_command(["mktemp", "-d", f"{base}/{TEMP_PREFIX}XXXXXX"]), SETUP_TIMEOUT_S,
                        "making a temp folder")
        folder = last_line(proc.stdout)
        if proc.returncode != 0 or not re.fullmatch(re.escape(f"{base}/{TEMP_PREFIX}") + r"[A-Za-z0-9]+", folder):
            raise DeviceError("unreachable", f"{self.target}: cannot make a temp folder in {self.profile.remote_dir} "
                                             f"({last_line(proc.stderr) or folder or 'no output'}); set remote_dir "
                                             f"in [targets.{self.name}] to a writable folder")
        return folder

    def remove(self, folder: str) -> None:
        try:
            self.run(self.shell_command(["rm", "-rf", "--", folder]), SETUP_TIMEOUT_S, "removing the temp folder")
        except DeviceError:  # the device went away: nothing more can be done, and the first error matters more
            pass

    def run_agent(self, model: Path | Sequence[Path], agent_args: list[str], timeout: float) -> dict:
        models = [m.absolute() for m in as_list(model)]
        if len({m.name for m in models}) < len(models):
            raise DeviceError("bad_model", f"{self.target}: models with the same file name ({names_of(models)}) "
                                           "cannot share one temp folder; benchmark them in separate calls")
        agent = zipapp_file()
        files = [agent, *(f for m in models for f in files_for(self.target, m))]
        deadline = Deadline(timeout)
        with self.staged(files, names_of(models), deadline) as folder:
            argv = [self.profile.python, f"{folder}/{agent.name}", *(f"{folder}/{m.name}" for m in models),
                    *agent_args]
            proc = self.run(self.shell_command(argv), deadline.left(), f"the benchmark of {names_of(models)}")
            return agent_result(self.target, self.name, self.profile.python, proc)

    @contextlib.contextmanager
    def staged(self, files: list[Path], names: str, deadline: Deadline) -> Iterator[str]:
        """A fresh temp folder on the device holding `files`, removed afterwards whatever happens."""
        folder = self.make_temp_dir()
        try:
            copied = self.run(self.copy_command(files, folder), deadline.left(), f"copying {names}")
            if copied.returncode != 0:
                raise DeviceError("agent_failed", f"{self.target}: copying {names} to {folder} failed "
                                                  f"({last_line(copied.stderr)}); check free space there")
            yield folder
        finally:
            self.remove(folder)


class SshDevice(RemoteDevice):
    """A board or Mac over OpenSSH (the system ssh and scp, batch mode, strict host keys by default)."""

    connection = "ssh"

    @property
    def destination(self) -> str:
        return f"{self.profile.user}@{self.profile.host}" if self.profile.user else str(self.profile.host)

    @property
    def where(self) -> str:
        return f"{self.destination}, port {self.profile.port}"

    def options(self) -> list[str]:
        p = self.profile
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "LogLevel=ERROR",
                "-o", f"StrictHostKeyChecking={'yes' if p.strict_host_key_checking else 'no'}"]
        if p.identity_file:
            opts += ["-i", p.identity_file]
        if p.known_hosts_file:
            opts += ["-o", f"UserKnownHostsFile={p.known_hosts_file}"]
        return opts

    def shell_command(self, argv: list[str]) -> list[str]:
        return ["ssh", *self.options(), "-p", str(self.profile.port), "--", self.destination, shlex.join(argv)]

    def copy_command(self, files: list[Path], remote_dir: str) -> list[str]:
        host = f"[{self.profile.host}]" if ":" in str(self.profile.host) else str(self.profile.host)
        remote = f"{self.profile.user}@{host}" if self.profile.user else host
        recursive = ["-r"] if any(f.is_dir() for f in files) else []
        return ["scp", "-q", *recursive, *self.options(), "-P", str(self.profile.port), "--",
                *map(str, files), f"{remote}:{remote_dir}/"]

    def unreachable(self, proc: subprocess.CompletedProcess) -> DeviceError | None:
        if proc.returncode != 255:  # ssh's own failures; anything else is the remote command's status
            return None
        reason = last_line(proc.stderr) or "no output"
        if "host key" in proc.stderr.lower():
            known = self.profile.known_hosts_file or "~/.ssh/known_hosts"
            fix = (f"check the device's host key fingerprint, then add it: ssh-keyscan -p {self.profile.port} "
                   f"{self.profile.host} >> {known}")
        elif "permission denied" in reason.lower():
            fix = f"set user and identity_file in [targets.{self.name}] and add the public key to the device"
        else:
            fix = f"check that the device is on and runs sshd, and host/port in [targets.{self.name}]"
        return DeviceError("unreachable", f"{self.target}: ssh failed ({reason}); {fix}")

    def check(self) -> None:
        """Raise DeviceError('unreachable') unless `ssh ... true` succeeds."""
        try:
            proc = self.run(self.shell_command(["true"]), SETUP_TIMEOUT_S, "connecting")
        except DeviceError as exc:
            raise DeviceError("unreachable", str(exc)) from None
        if proc.returncode != 0:
            raise DeviceError("unreachable", f"{self.target}: `true` failed over ssh with status "
                                             f"{proc.returncode} ({last_line(proc.stderr)}); check the device's shell")
