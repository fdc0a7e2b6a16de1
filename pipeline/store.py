"""Content-addressed artifact store: one directory per (stage, cache key), with a manifest of file hashes.

A stage writes into `<stage>-<key>.partial/` (which also holds its resumable checkpoint); only when
it completes is a manifest written and the directory renamed to `<stage>-<key>/`. An artifact whose
files no longer match their manifest hashes is reported as damaged and never reused.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.core.fileio import is_partial_write, read_json, write_json

MANIFEST = "manifest.json"


def cache_key(stage: str, code: str, config: dict, inputs: dict[str, str]) -> str:
    """The artifact's identity: the stage, the digest of its code, the config it reads and its inputs' keys."""
    payload = {"stage": stage, "code": code, "config": config, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_problem(manifest) -> str | None:
    """Why a manifest read back from the cache is not one `commit` writes, or None. Its file names must stay
    inside the artifact folder: the check hashes each named file, and must not read anything else."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "no file list"
    if not isinstance(manifest.get("summary", {}), dict) or not isinstance(manifest.get("wall_s", 0.0), (int, float)):
        return "summary or wall_s of the wrong type"
    for name, meta in manifest["files"].items():
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or name == MANIFEST:
            return f"file name {name[:80]!r} outside the artifact"
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and type(meta.get("bytes")) is int):
            return f"no hash and size for {name[:80]!r}"
    return None


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key[:16]}"

    def lock_path(self, stage: str, key: str) -> Path:
        return self.root / ".locks" / f"{stage}-{key[:16]}.lock"

    def partial(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key[:16]}.partial"

    def check(self, stage: str, key: str, resumes: tuple[str, ...] = ()) -> tuple[str, str]:
        """('cached' | 'missing' | 'damaged', reason); `resumes` names the stage's resumable checkpoints."""
        final = self.path(stage, key)
        manifest_path = final / MANIFEST
        if not manifest_path.is_file():
            work = self.partial(stage, key)
            if any((work / name).is_file() for name in resumes):
                return "missing", "an interrupted run left a checkpoint: the next run resumes it"
            if work.is_dir():
                return "missing", "an earlier run of it did not finish"
            return "missing", "never run with this configuration"
        try:
            manifest = read_json(manifest_path)
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            return "damaged", f"unreadable manifest ({type(exc).__name__}: {str(exc)[:100]})"
        why = _manifest_problem(manifest)
        if why:
            return "damaged", f"unreadable manifest ({why})"
        files = manifest["files"]
        for name, meta in files.items():
            file = final / name
            if not file.is_file():
                return "damaged", f"{name} is missing"
            if not file.resolve().is_relative_to(final.resolve()):
                return "damaged", f"{name} links outside the artifact"
            if file.stat().st_size != meta["bytes"] or file_sha256(file) != meta["sha256"]:
                return "damaged", f"{name} does not match its recorded hash"
        return "cached", f"artifact {final.name} verified ({len(files)} files)"

    def begin(self, stage: str, key: str) -> Path:
        """The working directory for a run of the stage; kept across interruptions for resuming."""
        work = self.partial(stage, key)
        work.mkdir(parents=True, exist_ok=True)
        return work

    def commit(self, stage: str, key: str, manifest: dict, scratch: tuple[str, ...] = ()) -> Path:
        """Hash the work directory's files into the manifest and rename it into place.

        `scratch` names files only needed while running (resumable checkpoints); they are removed.
        """
        work, final = self.partial(stage, key), self.path(stage, key)
        for name in scratch:
            (work / name).unlink(missing_ok=True)
        for leftover in [p for p in work.rglob("*") if p.is_file() and is_partial_write(p)]:
            leftover.unlink()  # a write a kill cut short before the stage was resumed
        files = {}
        for file in sorted(p for p in work.rglob("*") if p.is_file()):
            name = file.relative_to(work).as_posix()
            files[name] = {"sha256": file_sha256(file), "bytes": file.stat().st_size}
        write_json(work / MANIFEST, {**manifest, "key": key, "files": files})
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        return final

    def drop_if_empty(self, stage: str, key: str) -> None:
        """Remove a failed run's work folder when it holds no file (nothing to resume from)."""
        work = self.partial(stage, key)
        if work.is_dir() and not any(p.is_file() for p in work.rglob("*")):
            shutil.rmtree(work, ignore_errors=True)

    def manifest(self, stage: str, key: str) -> dict:
        return read_json(self.path(stage, key) / MANIFEST)

    def discard(self, stage: str, key: str, partial: bool = False) -> None:
        """Drop a damaged or forced artifact (with `partial`, its interrupted run too) before rerunning."""
        shutil.rmtree(self.path(stage, key), ignore_errors=True)
        if partial:
            shutil.rmtree(self.partial(stage, key), ignore_errors=True)
