"""The base of every config model: a strict pydantic section whose cache key leaves out the fields that
cannot change a result. Each stage, backend and target module declares its config model on it, beside the
code that reads it; pipeline/config.py composes them into the schema."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

NOT_IN_KEY = "x-not-in-cache-key"
MAX_KEY_DEPTH = 8  # timm takes flat keyword arguments; a few levels leave room for a dict-valued one


def nesting_depth(value: Any) -> int:
    """How deeply tables and arrays nest in a value (iterative: a hostile value must not recurse)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        deepest = max(deepest, level)
        if level <= MAX_KEY_DEPTH and isinstance(item, (dict, list)):
            todo += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def not_in_key(default: Any, description: str, **constraints: Any) -> Any:
    """A field that cannot change any result (where data is downloaded from, thread counts): left out
    of the cache keys, so changing it reuses every artifact. The schema marks it with NOT_IN_KEY."""
    return Field(default, description=description, json_schema_extra={NOT_IN_KEY: True}, **constraints)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No text field takes a NUL character: no path, file or model name can hold one (the OS refuses it)."""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("has a NUL character (\\x00), which no path or name can hold: remove it")
        return value

    def key_fields(self) -> dict:
        """The section as it enters a cache key: every field but those marked not_in_key."""
        dump = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            if (info.json_schema_extra or {}).get(NOT_IN_KEY):
                del dump[name]
            elif isinstance(getattr(self, name), Section):
                dump[name] = getattr(self, name).key_fields()
        return dump
