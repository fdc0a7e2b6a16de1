"""Model factory: any timm model by name with keyword overrides, plus our own registered families.

Saved models are a dict {format, model, kwargs, state_dict} so any stage can rebuild them.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
import torch.nn as nn

from pipeline.errors import UserError
from pipeline.fileio import atomic_write
from stages.models import convstem_vit  # noqa: F401  (registers convstem_vit_* with timm)

FORMAT = "manifold-edge/model-v1"


def existing_file(key: str, path: str) -> Path:
    """The file a config field names, or a UserError naming the field."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{key} = {path!r} does not exist")
    return file


def data_kwargs(meta: dict) -> dict:
    """The model keywords fixed by the data stage's meta.json."""
    return {"in_chans": meta["channels"], "num_classes": meta["num_classes"], "img_size": meta["img_size"]}


def create_model(field: str, name: str, overrides: dict, data_kwargs: dict, pretrained: bool = False,
                 pretrained_file: str | None = None) -> tuple[nn.Module, dict]:
    """Build `name` with the data's in_chans/num_classes/img_size and the user's overrides.

    Returns the model and the kwargs that rebuild it. `field` names the config section in errors.
    """
    if name not in timm.list_models(pretrained=False):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UserError(f"{field}.model = {name!r} is not a timm model{hint}")
    for key, value in data_kwargs.items():
        if key in overrides and overrides[key] != value:
            raise UserError(f"{field}.overrides.{key} = {overrides[key]!r} contradicts the data ({key} = "
                            f"{value!r}): remove it, or change the [data] section")
    kwargs = {**data_kwargs, **overrides}
    extra = {}
    if pretrained_file:
        extra["pretrained_cfg_overlay"] = {"file": str(existing_file(f"{field}.pretrained_file", pretrained_file))}
    try:
        try:
            model = timm.create_model(name, pretrained=pretrained, **extra, **kwargs)
        except TypeError as exc:  # CNNs take any image size and have no img_size keyword
            if "img_size" not in str(exc) or "img_size" in overrides:
                raise
            kwargs.pop("img_size")
            model = timm.create_model(name, pretrained=pretrained, **extra, **kwargs)
    except TypeError as exc:
        raise UserError(f"{field}.overrides: timm model {name!r} rejected the keywords {kwargs}: {exc}") from None
    except (AssertionError, ValueError) as exc:
        raise UserError(f"{field}: timm could not build {name!r} with {kwargs}: {exc}") from None
    return model, kwargs


def architecture(field: str, name: str, overrides: dict, channels: int, img_size: int) -> nn.Module | None:
    """The model's modules on the meta device (no weights, no memory), to check a config before anything runs;
    None when timm cannot build it there (the stage then checks it when it builds the real model)."""
    data = {"in_chans": channels, "num_classes": overrides.get("num_classes", 10), "img_size": img_size}
    try:
        with torch.device("meta"):
            return create_model(field, name, overrides, data)[0]
    except UserError:
        raise
    except Exception:  # some model's initialisation needs real tensors
        return None


def save_model(path: Path, model: nn.Module, name: str, kwargs: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model": name, "kwargs": kwargs, "state_dict": state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, the saved record)."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(record["model"], **record["kwargs"])
    model.load_state_dict(record["state_dict"])
    return model.eval(), record


def load_weights(field: str, model: nn.Module, path: str) -> None:
    """Load a local checkpoint: our model.pt, a timm/DeiT-style {'model'|'state_dict': ...}, or a state dict."""
    file = existing_file(f"{field}.checkpoint", path)
    try:
        record = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{field}.checkpoint = {path!r} is not a torch checkpoint ({reason})") from None
    if isinstance(record, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(record.get(key), dict):
                record = record[key]
                break
    if not isinstance(record, dict) or not all(isinstance(v, torch.Tensor) for v in record.values()):
        raise UserError(f"{field}.checkpoint = {path!r} holds no state dict (a {type(record).__name__}); give "
                        "a model.pt of ours, a timm/DeiT checkpoint or a plain state dict")
    mismatch = first_mismatch(model.state_dict(), record)
    if mismatch:
        raise UserError(f"{field}.checkpoint = {path!r} does not fit {field}.model: {mismatch}; check "
                        f"{field}.model and {field}.overrides")
    model.load_state_dict(record)


def first_mismatch(expected: dict, given: dict) -> str | None:
    """The first tensor that is missing, unexpected or of another shape, in words."""
    for name, tensor in expected.items():
        if name not in given:
            return f"tensor '{name}' {tuple(tensor.shape)} is missing"
        if given[name].shape != tensor.shape:
            return f"tensor '{name}' is {tuple(given[name].shape)}, the model needs {tuple(tensor.shape)}"
    extra = next((name for name in given if name not in expected), None)
    return f"tensor '{extra}' is not in the model" if extra else None
