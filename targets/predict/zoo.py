"""The public models the predictor learns from, rebuilt here: each qai-hub-models image classifier that
timm or torchvision can build (random weights: latency does not depend on them), exported to ONNX with
the export stage's exporter at the input size AI Hub measured, and its graph features (features.py).

    .venv/bin/python -m targets.predict.zoo [--only vit,levit] [--out targets/predict/features.csv]

AI Hub's own sources differ in details (HF ports of LeViT, MobileViT and BEiT; Swin with its attention
patched for the NPU; the EfficientViT and RepViT repos): the builds here are the same architectures at the
same sizes, so FLOPs and tensor sizes match, op lists may not. Not buildable here: gpunet, internimage.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from pathlib import Path

from pipeline.core.fileio import write_text
from targets.predict.features import NUMERIC, features

OUT = Path(__file__).with_name("features.csv")
# AI Hub model id -> (architecture family: held out together, builder, input size)
ZOO = {
    "beit": ("vit", "timm:beit_base_patch16_224", 224),
    "vit": ("vit", "torchvision:vit_b_16", 224),
    "convnext_base": ("convnext", "torchvision:convnext_base", 224),
    "convnext_tiny": ("convnext", "torchvision:convnext_tiny", 224),
    "convnext_v2_base": ("convnext", "timm:convnextv2_base", 224),
    "densenet121": ("densenet", "torchvision:densenet121", 224),
    "dla102x": ("dla", "timm:dla102x", 224),
    "efficientformer": ("efficientformer", "timm:efficientformer_l1", 224),
    "efficientnet_b0": ("efficientnet", "torchvision:efficientnet_b0", 224),
    "efficientnet_b4": ("efficientnet", "torchvision:efficientnet_b4", 380),
    "efficientnet_lite4": ("efficientnet", "timm:tf_efficientnet_lite4", 300),
    "efficientnet_v2_s": ("efficientnet", "torchvision:efficientnet_v2_s", 384),
    "efficientvit_b2_cls": ("efficientvit", "timm:efficientvit_b2", 224),
    "efficientvit_l2_cls": ("efficientvit", "timm:efficientvit_l2", 384),
    "googlenet": ("inception", "torchvision:googlenet", 224),
    "inception_v3": ("inception", "torchvision:inception_v3", 299),
    "inception_v4": ("inception", "timm:inception_v4", 299),
    "levit": ("levit", "timm:levit_128s", 224),
    "mnasnet05": ("mnasnet", "torchvision:mnasnet0_5", 224),
    "mobile_vit": ("mobilevit", "timm:mobilevit_s", 256),
    "mobilenet_v2": ("mobilenet", "torchvision:mobilenet_v2", 224),
    "mobilenet_v3_large": ("mobilenet", "torchvision:mobilenet_v3_large", 224),
    "mobilenet_v3_small": ("mobilenet", "torchvision:mobilenet_v3_small", 224),
    "mobilenet_v4": ("mobilenet", "timm:mobilenetv4_conv_medium", 224),
    "nasnet": ("nasnet", "timm:nasnetalarge", 331),
    "regnet": ("regnet", "torchvision:regnet_x_3_2gf", 224),
    "regnet_y_800mf": ("regnet", "torchvision:regnet_y_800mf", 224),
    "repvit": ("repvit", "timm:repvit_m2_3", 224),
    "resnet18": ("resnet", "torchvision:resnet18", 224),
    "resnet50": ("resnet", "torchvision:resnet50", 224),
    "resnet101": ("resnet", "torchvision:resnet101", 224),
    "resnext50": ("resnet", "torchvision:resnext50_32x4d", 224),
    "resnext101": ("resnet", "torchvision:resnext101_32x8d", 224),
    "wideresnet50": ("resnet", "torchvision:wide_resnet50_2", 224),
    "sequencer2d": ("sequencer", "timm:sequencer2d_s", 224),
    "shufflenet_v2": ("shufflenet", "torchvision:shufflenet_v2_x0_5", 224),
    "squeezenet1_1": ("squeezenet", "torchvision:squeezenet1_1", 224),
    "swin_tiny": ("swin", "torchvision:swin_t", 224),
    "swin_small": ("swin", "torchvision:swin_s", 224),
    "swin_base": ("swin", "torchvision:swin_b", 224),
    "swinv2_base": ("swin", "torchvision:swin_v2_b", 256),
}
FIELDS = ["model", "family", "builder", "input_size", *NUMERIC, "uncovered"]
# the class timm builds a model with -> its family above; a class left out (timm's EfficientNet builds
# EfficientNets, MobileNetV2s and MnasNets; ByobNet many designs) names no family
FAMILY_OF_CLASS = {"VisionTransformer": "vit", "Beit": "vit", "SwinTransformer": "swin", "SwinTransformerV2": "swin",
                   "Levit": "levit", "LevitDistilled": "levit", "ConvNeXt": "convnext", "ResNet": "resnet",
                   "DenseNet": "densenet", "DLA": "dla", "EfficientFormer": "efficientformer",
                   "EfficientVit": "efficientvit", "EfficientVitLarge": "efficientvit", "InceptionV3": "inception",
                   "InceptionV4": "inception", "RegNet": "regnet", "RepVit": "repvit", "MobileNetV3": "mobilenet",
                   "NASNetALarge": "nasnet", "Sequencer2d": "sequencer"}
STUDENT_FAMILY = "vit"  # the default student's (convstem_vit_tiny: timm's VisionTransformer with a conv stem)


def family_of(architecture: str | None) -> str | None:
    """The public family of a timm model name (export.json's `model`), from the class timm builds it with (on
    the meta device: no weights); None for a class no public family shares or a name timm cannot build. The
    project's own models are known to timm once stages.models is imported (the caller's part: targets sit below
    the stages)."""
    if not architecture:
        return None
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False)
    except Exception:  # timm raises many types for a name it cannot build: no family
        return None
    return FAMILY_OF_CLASS.get(type(model).__name__)


def build(builder: str):
    """An eval-mode torch model with random weights from 'timm:NAME' or 'torchvision:NAME'."""
    library, name = builder.split(":")
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision

    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return getattr(torchvision.models, name)(weights=None, **extra).eval()


def export(model, model_id: str, size: int, path: Path) -> None:
    """As the export stage does (dynamo exporter, opset 20, dynamic batch); a model the dynamo exporter fails on
    (timm's BEiT: a view of a transposed tensor) with the TorchScript exporter at batch 1."""
    import torch

    from backends.onnx.export import export_onnx
    from pipeline.core.errors import UserError

    try:
        export_onnx(model, model_id, (3, size, size), path, opset=20)
    except UserError as exc:
        print(f"{model_id}: {exc}; exported with the TorchScript exporter instead", file=sys.stderr)
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=20)


def zoo_features(model_id: str) -> dict:
    """One zoo model built, exported to ONNX, and measured."""
    family, builder, size = ZOO[model_id]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export(build(builder), model_id, size, path)
        f = features(path)
    uncovered = ";".join(f"{op}={n}" for op, n in f.pop("uncovered").items())
    return {"model": model_id, "family": family, "builder": builder, "input_size": size, **f, "uncovered": uncovered}


def write_csv(rows: list[dict], out: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["model"]))
    write_text(out, text.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model ids (default: all); the others keep "
                                                   "their rows in --out")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    wanted = [m for m in args.only.split(",") if m] or list(ZOO)
    unknown = [m for m in wanted if m not in ZOO]
    if unknown:
        print(f"--only: not in the zoo: {', '.join(unknown)}", file=sys.stderr)
        return 2
    rows = {}
    if args.out.exists():
        with open(args.out) as f:
            rows = {r["model"]: r for r in csv.DictReader(f) if r["model"] in ZOO}
    failed = []
    for model_id in wanted:
        try:
            rows[model_id] = zoo_features(model_id)
        except Exception as exc:  # one model's failure must not lose the others
            failed.append(model_id)
            print(f"{model_id}: failed: {str(exc).splitlines()[0][:300]}", file=sys.stderr, flush=True)
            continue
        write_csv(list(rows.values()), args.out)  # after each model: an interrupted rebuild keeps its work
        print(f"{model_id}: {rows[model_id]['total_gflops']:.2f} GFLOPs, {rows[model_id]['nodes']:.0f} nodes",
              flush=True)
    if failed:
        print(f"not rebuilt: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
