"""Target profiles: the built-in devices (targets/profiles.toml) plus a run's own [targets.NAME] tables."""
from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from pipeline.config import TargetProfile
from pipeline.errors import UserError

BUILTIN_FILE = Path(__file__).with_name("profiles.toml")


def builtin_profiles() -> dict[str, TargetProfile]:
    raw = tomllib.loads(BUILTIN_FILE.read_text())
    try:
        return {name: TargetProfile.model_validate(fields) for name, fields in raw.items()}
    except ValidationError as exc:  # a broken built-in is our bug, not the user's
        raise RuntimeError(f"{BUILTIN_FILE}: {exc}") from None


def all_profiles(user: dict[str, TargetProfile] | None = None) -> dict[str, TargetProfile]:
    """Built-ins, then the user's tables (which replace a built-in of the same name)."""
    return {**builtin_profiles(), **(user or {})}


def resolve(names: list[str], user: dict[str, TargetProfile] | None = None) -> dict[str, TargetProfile]:
    known = all_profiles(user)
    missing = [n for n in names if n not in known]
    if missing:
        import difflib

        hints = [f"'{n}'" + (f" (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(n, known, n=1)) else "")
                 for n in missing]
        raise UserError(f"benchmark.targets: no target profile {', '.join(hints)}; known: {', '.join(known)} "
                        "(or define [targets.NAME] in pipeline.toml)")
    return {n: known[n] for n in names}
