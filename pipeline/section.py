"""The base of every config model: a strict pydantic section whose cache key leaves out the fields that
cannot change a result. Backend modules (stages/formats/) declare their config models on it without
importing the whole schema."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NOT_IN_KEY = "x-not-in-cache-key"


def not_in_key(default: Any, description: str, **constraints: Any) -> Any:
    """A field that cannot change any result (where data is downloaded from, thread counts): left out
    of the cache keys, so changing it reuses every artifact. The schema marks it with NOT_IN_KEY."""
    return Field(default, description=description, json_schema_extra={NOT_IN_KEY: True}, **constraints)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    def key_fields(self) -> dict:
        """The section as it enters a cache key: every field but those marked not_in_key."""
        dump = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            if (info.json_schema_extra or {}).get(NOT_IN_KEY):
                del dump[name]
            elif isinstance(getattr(self, name), Section):
                dump[name] = getattr(self, name).key_fields()
        return dump
