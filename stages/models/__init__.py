"""Model factory: any timm model by name with keyword overrides, plus our own registered families.

Saved models are a dict {format, model, kwargs, state_dict} so any stage can rebuild them.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
import torch.nn as nn

from pipeline.core.errors import UserError, clip, quote, root_cause
from pipeline.core.fileio import atomic_write
from stages.checkpoints import load_weights_only
from stages.models import convstem_vit  # noqa: F401  (registers convstem_vit_* with timm)

FORMAT = "manifold-edge/model-v1"


def existing_file(key: str, path: str) -> Path:
    """The file a config field names, or a UserError naming the field."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{key} = {quote(path)} is a folder: give the file itself")
    if not file.is_file():
        raise UserError(f"{key} = {quote(path)} does not exist")
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
        raise UserError(f"{field}.model = {quote(name)} is not a timm model{hint}")
    for key, value in data_kwargs.items():
        if key in overrides and overrides[key] != value:
            raise UserError(f"{field}.overrides.{key} = {quote(overrides[key])} contradicts the data ({key} = "
                            f"{quote(value)}): remove it, or change the [data] section")
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
        raise UserError(f"{field}.overrides: timm model {quote(name)} rejected the keywords {clip(repr(kwargs), 100)}: "
                        f"{short(exc, 100)}") from None
    except Exception as exc:  # timm and torch raise many types for a model that cannot be built as asked
        if pretrained_file:
            raise UserError(f"{field}.pretrained_file = {quote(pretrained_file)}: timm could not load it as "
                            f"{quote(name)}'s weights ({short(exc)}): give a .safetensors or .pth checkpoint of that "
                            "model") from None
        if pretrained and _offline(exc):
            raise UserError(f"{field}.pretrained = true: timm could not download {quote(name)}'s weights (no network "
                            f"or no access: {short(exc)}); give {field}.pretrained_file (a local checkpoint) or "
                            f"set {field}.pretrained = false") from None
        raise UserError(f"{field}: timm could not build {quote(name)} with {clip(repr(kwargs), 100)}: "
                        f"{short(exc)}") from None
    return model, kwargs


def readable_checkpoint(key: str, path: str) -> Path:
    """A file that a checkpoint loader can read (safetensors, or a torch file of tensors), else a UserError."""
    file = existing_file(key, path)
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt"):
                pass
        else:
            load_weights_only(file)
    except Exception as exc:  # pickle, zip and safetensors raise their own types
        raise UserError(f"{key} = {quote(path)} is not a checkpoint ({load_failure(exc)}): give a .safetensors or .pth "
                        "file of the model's weights") from None
    return file


def has_published_weights(name: str) -> bool:
    """Whether timm knows where to download `name`'s pretrained weights (Hugging Face Hub or a URL)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return bool(cfg and (cfg.hf_hub_id or cfg.url or cfg.file))


def short(exc: BaseException, limit: int = 200) -> str:
    """An exception as one line of at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _offline(exc: BaseException) -> bool:
    """A download that failed for want of the network (huggingface_hub, urllib, requests, socket)."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "URLError",
                         "gaierror", "TimeoutError", "ConnectTimeout", "ReadTimeout", "MaxRetryError"})


def architecture(field: str, name: str, overrides: dict, channels: int, img_size: int,
                 num_classes: int | None = None) -> nn.Module:
    """The model built and run on one image of the data's size, to check a config before anything runs: on
    the meta device (no weights, no memory), or for real on the CPU where the meta device cannot build or
    run it. A model that cannot be built or cannot take that image is a UserError naming the field; so is an
    overrides.num_classes that contradicts the data's `num_classes` (when given)."""
    classes = overrides.get("num_classes", 10) if num_classes is None else num_classes
    data = {"in_chans": channels, "num_classes": classes, "img_size": img_size}
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = create_model(field, name, overrides, data)[0]
        except UserError:
            if device == "cpu":
                raise
            continue  # some model's initialisation needs real tensors
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, channels, img_size, img_size, device=device))
        except Exception as exc:  # the meta device lacks some ops: the real forward decides
            if device == "cpu":
                raise UserError(f"{field}.model = {quote(name)} cannot take a {channels} x {img_size} x {img_size} "
                                f"image: {short(exc)}; change data.img_size (a multiple of the patch size) or "
                                f"{field}.overrides") from None
            continue
        return model
    raise AssertionError("unreachable")


def save_model(path: Path, model: nn.Module, name: str, kwargs: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model": name, "kwargs": kwargs, "state_dict": state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, the saved record)."""
    record = load_weights_only(path)
    if not (isinstance(record, dict) and isinstance(record.get("model"), str) and isinstance(record.get("kwargs"), dict)
            and isinstance(record.get("state_dict"), dict) and ":" not in record["model"]
            and timm.is_model(record["model"])):  # not an `hf-hub:` or `local-dir:` name: nothing is fetched
        raise UserError(f"{path} is damaged (not a model saved by this pipeline): delete {path.parent} and rerun")
    # the kwargs are read back from the cache: none of them may load weights (the state dict below does)
    kwargs = {k: v for k, v in record["kwargs"].items() if k not in ("pretrained", "checkpoint_path")}
    model = timm.create_model(record["model"], pretrained=False, **kwargs)
    model.load_state_dict(record["state_dict"])
    return model.eval(), record


def load_weights(field: str, model: nn.Module, path: str) -> None:
    """Load a local checkpoint: our model.pt, a timm/DeiT-style {'model'|'state_dict': ...}, or a state dict."""
    record = checkpoint_state(field, path)
    check_fit(field, path, model, record)
    model.load_state_dict(record)


def check_checkpoint(field: str, model: nn.Module, path: str) -> None:
    """Before anything runs: `field`.checkpoint holds a state dict whose tensors fit `model` (which may be on the
    meta device: only the shapes are compared), else the UserError `load_weights` would raise."""
    check_fit(field, path, model, checkpoint_state(field, path))


def check_fit(field: str, path: str, model: nn.Module, state: dict) -> None:
    mismatch = first_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(f"{field}.checkpoint = {quote(path)} does not fit {field}.model: {mismatch}; check "
                        f"{field}.model and {field}.overrides")


def checkpoint_state(field: str, path: str) -> dict[str, torch.Tensor]:
    """The state dict in `field`.checkpoint (loaded weights-only: our model.pt, a timm/DeiT-style
    {'model'|'state_dict': ...}, a state dict, or a .safetensors file), else a UserError naming the field."""
    file = existing_file(f"{field}.checkpoint", path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            record = load_file(str(file))
        else:
            record = load_weights_only(file)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{field}.checkpoint = {quote(path)} is not a torch checkpoint ({load_failure(exc)})") \
            from None
    if isinstance(record, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(record.get(key), dict):
                record = record[key]
                break
    if not isinstance(record, dict) or not all(isinstance(v, torch.Tensor) for v in record.values()):
        raise UserError(f"{field}.checkpoint = {quote(path)} holds no state dict (a {type(record).__name__}); give "
                        "a model.pt of ours, a timm/DeiT checkpoint or a plain state dict")
    return record


def load_failure(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) failed, in one short line: the unpickler's own reason rather than torch's
    paragraph (which suggests turning weights-only loading off, i.e. running code from the file)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        return f"weights-only loading refused it: {clip(detail, 120)}"
    return clip(" ".join(root_cause(exc).split()), 160)  # a bare value (a text file: KeyError 101) with its type


def first_mismatch(expected: dict, given: dict) -> str | None:
    """The first tensor that is missing, unexpected or of another shape, in words (names quoted: a checkpoint's
    keys may hold anything)."""
    for name, tensor in expected.items():
        if name not in given:
            return f"tensor {quote(name, 100)} {tuple(tensor.shape)} is missing"
        if given[name].shape != tensor.shape:
            return f"tensor {quote(name, 100)} is {tuple(given[name].shape)}, the model needs {tuple(tensor.shape)}"
    extra = next((name for name in given if name not in expected), None)
    return f"tensor {quote(extra, 100)} is not in the model" if extra is not None else None
