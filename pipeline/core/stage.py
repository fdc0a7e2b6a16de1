"""The one interface every stage implements: declared config sections and inputs, and one `run`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from pipeline.core.progress import Progress


@dataclass(frozen=True)
class Accel:
    """How training runs, not what it computes (so not part of any cache key)."""
    compile: bool = False
    channels_last: bool = False


@dataclass
class StageContext:
    """What a stage may see: its own config sections, its inputs' artifact folders, a folder to write."""

    config: dict[str, BaseModel]
    inputs: dict[str, Path]
    out: Path
    seed: int
    device: str
    progress: Progress
    key: str = ""  # this run's cache key, for provenance written into artifacts
    accel: Accel = Accel()  # how training runs (compile, memory format): not part of the key


class Stage:
    """A pipeline step. Subclasses set the class attributes and implement `run`.

    `sections` are the pipeline.toml sections it reads, `inputs` the upstream stages whose
    artifacts it reads, `scripts` the project modules it runs as programs rather than imports (their
    code counts in its cache key like the modules it imports: see pipeline/fingerprint.py), `data` the files
    of the project it reads as data (paths from the project root; their bytes count in its key),
    `scratch` names working files removed when the stage completes, `resumes` the ones among them a rerun
    resumes from (epoch checkpoints). A `distributed`
    stage runs in every process of a multi-process run (rank 0 alone writes); the others run on
    rank 0 only. The module declaring a stage imports only the engine at its top, and torch, timm and the
    runtimes inside `check` and `run`: the engine reads the declarations to plan and explain cache keys
    (`status`) without loading them.
    """

    name: ClassVar[str]
    scripts: ClassVar[tuple[str, ...]] = ()
    data: ClassVar[tuple[str, ...]] = ()
    sections: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[str, ...]] = ()
    uses_seed: ClassVar[bool] = True
    scratch: ClassVar[tuple[str, ...]] = ()
    resumes: ClassVar[tuple[str, ...]] = ()
    distributed: ClassVar[bool] = False

    @classmethod
    def check(cls, cfg: Any, world_size: int) -> None:
        """Raise UserError for a config problem (`cfg`: the whole PipelineConfig) found without running anything
        (paths, shapes, batch splits): called for every stage that will run (not reused from the cache) before
        the first one runs, and before torchrun starts any process."""

    @classmethod
    def check_files(cls, cfg: Any) -> None:
        """Raise UserError for an input file that `run` could not read (an image, a dataset file): called
        after the stage's `check`, before anything is written, only for a stage that will run (its artifact
        is not reused from the cache: a dataset already stored is not read again), in one process."""

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Write the artifact files into ctx.out; return a JSON-able summary for the manifest."""
        raise NotImplementedError
