"""The deploy folder's Core ML parts: the package's features as its spec declares them (read with
skip_model_load, so on Linux too), the runtime being the OS's, the OS versions of its specificationVersion, and
the metadata written into its user_defined_metadata."""
from __future__ import annotations

import shutil
from pathlib import Path

from backends.coreml.package import coremltools
from pipeline.core.logs import quiet

PIXELS = "none: pass pixels 0-255 (the normalisation is inside the model)"


def describe_io(path: Path, record: dict, data: dict) -> dict:
    """Features by kind (an image with its colour space and size, a multiarray, the class label, a logit per
    class, each output with its meaning) and the package's `specification_version`."""
    from coremltools.proto import FeatureTypes_pb2 as types

    with quiet(logger="coremltools"):
        spec = coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()
    described = spec.description
    roles = {described.predictedFeatureName: "the top class's name",
             described.predictedProbabilitiesName: "class name -> logit (the export adds no softmax: apply one "
                                                    "for probabilities)"}

    def feature(f) -> dict:
        kind = f.type.WhichOneof("Type")
        entry = {"name": f.name}
        if kind == "imageType":
            image = f.type.imageType
            entry.update(type="image", color=types.ImageFeatureType.ColorSpace.Name(image.colorSpace),
                         width=image.width, height=image.height)
        elif kind == "multiArrayType":
            array = f.type.multiArrayType
            entry.update(type="multiarray", shape=list(array.shape),
                         dtype=types.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower())
        elif kind == "dictionaryType":
            entry.update(type="dictionary", key=f.type.dictionaryType.WhichOneof("KeyType").removesuffix(
                "KeyType"), value="double")
        else:
            entry["type"] = kind.removesuffix("Type")
        if f.name in roles:
            entry["meaning"] = roles[f.name]
        return entry

    return {"inputs": [feature(f) for f in described.input], "outputs": [feature(f) for f in described.output],
            "specification_version": spec.specificationVersion}


def pixel_preprocess(io: dict, data: dict) -> dict:
    """A package takes an image (or a multiarray of pixels 0-255) and normalises inside; its outputs by meaning."""
    first = io["inputs"][0]
    image = first["type"] == "image"
    return {"expects": f"an image ({first.get('color')}, {first.get('width')} x {first.get('height')})" if image
            else f"a {first.get('dtype')} multiarray {first.get('shape')} of pixels 0-255, channels first",
            "formula": PIXELS,
            "output": "; ".join(f"{o['name']}: {o['meaning']}" for o in io["outputs"] if "meaning" in o)}


def runtime_line(version: str, record: dict, settings: dict, target: str, files: list[str]) -> str:
    """Core ML is the OS's (the card names the coremltools that converted the package), with the target
    profile's compute units."""
    units = settings.get("compute_units")
    return (f"Core ML (the OS's; converted with coremltools {version}); compute units: "
            + (f"{units} ({target}'s profile)" if units else "not set by the target's profile (Core ML's "
                                                             "default: ALL)"))


def minimum_os(io: dict, settings: dict) -> str:
    """The OS versions that run the package's specificationVersion, by coremltools' own table (watchOS alone for
    a watch, iOS for a phone, macOS for a laptop: the profile's `device`; every platform otherwise)."""
    version = io["specification_version"]
    names: dict[str, str] = {}
    for alias, target in coremltools().target.__members__.items():  # iOS17, macOS14, watchOS10, tvOS17 share 8
        if target.value == version:
            platform = alias.rstrip("0123456789_")
            names[platform] = f"{platform} {alias[len(platform):].replace('_', '.')}"
    wanted = {"watch": ["watchOS"], "phone": ["iOS"], "laptop": ["macOS"]}.get(settings.get("device"), list(names))
    return ", ".join(names[p] for p in wanted if p in names) + f" (Core ML specification version {version})"


def embed_metadata(path: Path, meta: dict[str, str]) -> None:
    """`meta` in the package's user_defined_metadata; the package saved beside and renamed."""
    with quiet(logger="coremltools"):  # coremltools' import and save notices
        model = coremltools().models.MLModel(str(path), skip_model_load=True)
        model.user_defined_metadata.update(meta)
        tmp = path.with_name("tmp-" + path.name)
        model.save(str(tmp))
    shutil.rmtree(path)
    tmp.rename(path)
