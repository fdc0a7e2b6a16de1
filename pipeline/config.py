"""The pipeline.toml schema (pydantic v2), loading with `--set` overrides, and readable errors."""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.errors import UserError, clip
from pipeline.section import Section, not_in_key
from stages.formats.executorch import ExecuTorchExportConfig, ExecuTorchQuantizeConfig
from stages.formats.litert import LiteRTExportConfig, LiteRTQuantizeConfig
from stages.formats.ort_mobile import OrtMobileConfig


class RunConfig(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
                      description="run name: results go to <output_dir>/<name>/")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for the data split, initialisation and batches")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    output_dir: str = Field("runs", description="where runs and the shared artifact cache live")
    threads: int = Field(0, ge=0, description="CPU threads for torch (per process); 0 = all cores "
                                              "(shared out between processes when nproc > 1)")
    nproc: int = Field(1, ge=1, le=1024, description="processes for the teacher and distill stages (DDP under "
                                                     "torchrun): one per GPU, or e.g. 2 on a CPU")
    compile: bool = Field(False, description="torch.compile the model being trained (the teacher and distill "
                                             "stages; pays off on long GPU runs)")
    channels_last: bool = Field(False, description="channels-last memory format on CUDA (helps conv stems "
                                                   "under bf16)")


class DataConfig(Section):
    dataset: Literal["fashion-mnist", "digits", "imagefolder"] = Field(
        "fashion-mnist", description="digits: scikit-learn's 8x8 digits; imagefolder: one folder per class "
                                     "under path (with path/train/ and path/test/, those are the splits)")
    path: str | None = Field(None, description="IDX folder (fashion-mnist) or class folders (imagefolder)")
    url: str = not_in_key("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                          "mirror to download fashion-mnist from when no local copy exists")
    cache_dir: str = not_in_key("~/.cache/manifold-edge/datasets", "where downloads are kept")
    img_size: int = Field(32, ge=4, le=1024, description="images are resized to img_size x img_size")
    channels: Literal[1, 3] = Field(1, description="1 (grayscale) or 3 (RGB): images are converted")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the training split held out")
    test_fraction: float = Field(0.2, gt=0, lt=0.5,
                                 description="test share, for datasets without an official test split")
    subset: int = Field(0, ge=0, description="use at most this many images of the training data, "
                                             "val included (0 = all)")
    test_subset: int = Field(0, ge=0, description="use at most this many test images (0 = all)")
    mean: list[float] | None = Field(None, description="per-channel mean; default: from the train split")
    std: list[float] | None = Field(None, description="per-channel std; default: from the train split")
    augment_shift: int = Field(2, ge=0, le=16, description="random translation in pixels (training)")
    augment_flip: bool = Field(True, description="random horizontal flip (training)")
    allow_class_mismatch: bool = Field(False, description="imagefolder: let train/ and test/ hold different "
                                       "class folders, or empty ones, with a warning and a report note instead "
                                       "of an error (empty training classes and classes only in test/ are left "
                                       "out; a class missing from test/ is trained but not tested)")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"data.{name} needs {self.channels} value(s), one per channel; got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"data.std must be positive; got {self.std}")
        if self.dataset == "imagefolder" and not self.path:
            raise ValueError("data.path is required for dataset = 'imagefolder' (a folder of class folders)")
        return self


class TrainConfig(Section):
    epochs: int = Field(5, ge=0, le=10_000, description="training epochs")
    batch_size: int = Field(128, ge=1, le=65_536, description="the global batch: with nproc processes each "
                                                               "takes batch_size / nproc")
    lr: float = Field(1e-3, gt=0, le=10, description="peak AdamW learning rate, after the warm-up; cosine "
                                                     "decay to min_lr")
    min_lr: float = Field(1e-5, ge=0, description="cosine schedule floor")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(0.5, ge=0, description="linear warm-up, in epochs (fractions allowed)")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm; unset = no clipping")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    max_nonfinite_steps: int = Field(3, ge=1, description="stop after this many consecutive steps with a NaN/inf "
                                                          "loss (each such step is skipped)")
    lr_scaling: Literal["none", "linear"] = Field("none", description="linear: the lr used is lr x batch_size "
                                                                   "/ 512, as in DeiT and the reference "
                                                                   "(batch_size is the global batch)")


class ModelConfig(Section):
    model: str = Field(description="a timm model name")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="keyword overrides for timm.create_model "
                                                  "(embed_dim, depth, num_heads, patch_size, ...)")

    @model_validator(mode="after")
    def _flat_enough(self) -> ModelConfig:
        if _depth(self.overrides) > MAX_KEY_DEPTH:
            raise ValueError(f"overrides: tables nested more than {MAX_KEY_DEPTH} levels deep; timm.create_model "
                             "takes flat keyword arguments (embed_dim = 128, depth = 6, ...)")
        huge = [k for k, v in self.overrides.items() if isinstance(v, int) and not isinstance(v, bool)
                and abs(v) > MAX_OVERRIDE]
        if huge:
            raise ValueError(f"overrides: {clip(huge[0], 40)} = {self.overrides[huge[0]]:,} is past any model this "
                             f"pipeline builds (|value| <= {MAX_OVERRIDE:,}); building it would exhaust the memory")
        return self


class TeacherConfig(ModelConfig, TrainConfig):
    model: str = Field("convstem_vit_small", description="any timm model name (a ViT, a hierarchical "
                       "transformer or a CNN); from checkpoint, pretrained weights or trained here from scratch")
    pretrained: bool = Field(False, description="load timm's published weights (needs the hub)")
    pretrained_file: str | None = Field(None, description="with pretrained: a local weights file instead")
    checkpoint: str | None = Field(None, description="a local state dict or a model.pt of ours")
    epochs: int = Field(5, ge=0, le=10_000, description="training (or fine-tuning) epochs; 0 = use as loaded")

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        if self.pretrained and self.checkpoint:
            raise ValueError("teacher.pretrained and teacher.checkpoint exclude each other: pick one")
        if self.pretrained_file and not self.pretrained:
            raise ValueError("teacher.pretrained_file needs teacher.pretrained = true")
        if not (self.pretrained or self.checkpoint) and self.epochs == 0:
            raise ValueError("teacher.epochs = 0 leaves a random teacher: set epochs, a checkpoint or pretrained")
        return self


class StudentConfig(ModelConfig):
    model: str = Field("convstem_vit_tiny", description="any timm model name; a DeiT distilled student "
                       "(deit_*_distilled_*) sends KD to its distillation head and CE to its class head")


PAPER_PRESET = {"alpha": 1.0, "w_intra": 4.0, "w_inter": 0.1, "w_random": 0.2, "k": 192, "beta": 1.0}


class DistillConfig(TrainConfig):
    epochs: int = Field(6, ge=1, le=10_000, description="training epochs of the student")
    preset: Literal["none", "paper"] = Field("none", description="paper: the paper's loss weights, over any "
                                             "given: " + ", ".join(f"{k} = {v:g}" for k, v in PAPER_PRESET.items()))
    kd: Literal["none", "soft", "hard"] = Field("soft", description="logit distillation")
    alpha: float = Field(0.5, ge=0, le=1, description="(1-alpha) CE + alpha KD")
    temperature: float = Field(1.0, gt=0, description="KD temperature T (soft: T^2 KL of the softened outputs)")
    manifold: bool = Field(True, description="add the fine-grained manifold loss")
    w_intra: float = Field(4.0, ge=0, description="intra-image relation weight")
    w_inter: float = Field(0.1, ge=0, description="inter-image relation weight")
    w_random: float = Field(0.2, ge=0, description="random-sampled relation weight")
    k: int = Field(192, ge=1, description="tokens sampled for the random-sampled term")
    beta: float = Field(1.0, ge=0, description="overall manifold weight")
    student_layers: list[int] | None = Field(None, description="student units to match: blocks of a ViT/DeiT/CaiT, "
                                             "stages (timm feature_info) of hierarchical models and CNNs "
                                             "(default: first and last third)")
    teacher_layers: list[int] | None = Field(None, description="teacher units, paired in order")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        return {**data, **PAPER_PRESET} if isinstance(data, dict) and data.get("preset") == "paper" else data

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        s, t = self.student_layers, self.teacher_layers
        if (s is None) != (t is None):
            raise ValueError("give both distill.student_layers and distill.teacher_layers, or neither")
        if s is not None and len(s) != len(t):
            raise ValueError(f"distill.student_layers ({len(s)}) and distill.teacher_layers ({len(t)}) "
                             "must pair up: give the same number of blocks")
        if s is not None and not s:
            raise ValueError("distill.student_layers is empty: set distill.manifold = false instead")
        return self


COREML_TARGETS = Literal["iOS15", "iOS16", "iOS17", "iOS18", "watchOS8", "watchOS9", "watchOS10", "watchOS11",
                         "macOS12", "macOS13", "macOS14", "macOS15"]


class CoreMLExportConfig(Section):
    enabled: bool = Field(True, description="also write model.mlpackage (Core ML ML program)")
    target: COREML_TARGETS = Field("iOS17", description="minimum deployment target (iOS17 phones, "
                                                        "watchOS10 watches)")
    precision: Literal["fp16", "fp32"] = Field("fp16", description="compute precision")
    input: Literal["image", "tensor"] = Field("image", description="an image input (grayscale/RGB pixels) "
                                                                   "or a float tensor of 0-255 pixels")
    author: str = Field("manifold-edge", description="the package's author metadata")
    license: str = Field("Apache-2.0", description="the package's license metadata")
    version: str = Field("1", description="the package's version metadata")
    parity_max_rel_diff: float = Field(3e-2, gt=0, description="max |logit diff| of the package vs torch, as a "
                                       "fraction of the largest |logit| (fp16 error scales with the values)")
    parity_min_agreement: float = Field(0.99, ge=0, le=1, description="min share of equal argmax, package vs "
                                                                      "torch")


class CoreMLVariant(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="names the file model_<name>.mlpackage")
    kind: Literal["linear", "palettize"] = Field(description="linear INT8/UINT8 weights, or a k-means palette")
    nbits: Literal[1, 2, 3, 4, 6, 8] = Field(8, description="bits per weight (palettize: 1, 2, 3, 4, 6 or 8)")
    dtype: Literal["int8", "uint8"] = Field("int8", description="linear only")
    mode: Literal["linear", "linear_symmetric", "kmeans", "uniform"] | None = Field(
        None, description="default: linear_symmetric for linear, kmeans for palettize")
    granularity: Literal["per_tensor", "per_channel", "per_grouped_channel", "per_block"] = Field(
        "per_channel", description="per_block and per_grouped_channel need iOS18")
    weight_threshold: int = Field(2048, ge=1, description="compress only weights with at least this many elements")
    op_types: list[str] = Field(default_factory=list, description="compress only these MIL op types "
                                                                  "(e.g. linear, conv); empty = all")

    @model_validator(mode="after")
    def _check(self) -> CoreMLVariant:
        if self.kind == "linear" and self.nbits != 8:
            raise ValueError(f"quantize.coreml.variants '{self.name}': linear quantization is 8-bit; "
                             f"nbits = {self.nbits} needs kind = 'palettize'")
        if self.mode and (self.mode in ("kmeans", "uniform")) != (self.kind == "palettize"):
            raise ValueError(f"quantize.coreml.variants '{self.name}': mode '{self.mode}' does not fit kind "
                             f"'{self.kind}' (linear: linear | linear_symmetric; palettize: kmeans | uniform)")
        return self


class CoreMLQuantizeConfig(Section):
    enabled: bool = Field(True, description="compressed Core ML variants (needs export.coreml)")
    variants: list[CoreMLVariant] = Field(default_factory=lambda: [
        CoreMLVariant(name="int8", kind="linear"),
        CoreMLVariant(name="palettize6", kind="palettize", nbits=6, granularity="per_tensor"),
        CoreMLVariant(name="palettize4", kind="palettize", nbits=4, granularity="per_tensor")],
        description="the compressed packages to write, one [[quantize.coreml.variants]] table each")
    w8a8: bool = Field(False, description="also quantize activations with calibration data (needs macOS)")


class ExportConfig(Section):
    opset: int = Field(20, ge=17, le=22, description="ONNX opset (17 has LayerNormalization; 23 fuses "
                                                     "attention, which quantizers do not take yet)")
    openvino: bool = Field(True, description="also convert to OpenVINO IR")
    openvino_fp16: bool = Field(False, description="store the IR's weights as fp16 (half the size)")
    parity_images: int = Field(512, ge=1, description="validation images for the parity check")
    parity_max_abs_diff: float = Field(1e-3, gt=0, description="max |logit diff| vs torch (fp32 exports)")
    parity_max_abs_diff_fp16: float = Field(5e-2, gt=0, description="the same for fp16-compressed weights")
    parity_min_agreement: float = Field(0.99, ge=0, le=1, description="min share of equal argmax vs torch")
    coreml: CoreMLExportConfig = Field(default_factory=CoreMLExportConfig)
    ort_mobile: OrtMobileConfig = Field(default_factory=OrtMobileConfig)
    executorch: ExecuTorchExportConfig = Field(default_factory=ExecuTorchExportConfig)
    litert: LiteRTExportConfig = Field(default_factory=LiteRTExportConfig)


class QuantizeConfig(Section):
    onnx_static: bool = Field(True, description="ONNX Runtime static INT8 (QDQ, calibrated)")
    onnx_dynamic: bool = Field(True, description="ONNX Runtime dynamic INT8 (weights; activations at run time)")
    openvino: bool = Field(True, description="OpenVINO INT8 with nncf.quantize (needs export.openvino)")
    calibration_images: int = Field(512, ge=1, description="training images for calibration")
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = Field(
        "MinMax", description="ONNX static: how activation ranges are found on the calibration images")
    per_channel: bool = Field(True, description="per-channel weight scales (ONNX static)")
    static_attention_float: bool = Field(True, description="ONNX static: keep the attention matmuls (Q K^T, "
                                         "softmax x V) and so the Softmax in float; quantizing them forces an "
                                         "INT8 softmax that costs more than it saves (bench/int8_variants.py)")
    dynamic_per_channel: bool = Field(True, description="ONNX dynamic: per-channel weight scales")
    reduce_range: Literal["auto", "on", "off"] = Field(
        "auto", description="ONNX INT8 with 7-bit weights; auto = on for x86 CPUs without VNNI (ONNX Runtime's "
                            "advice there: AVX2 INT8 sums can saturate), off elsewhere")
    openvino_speed_check: bool = Field(True, description="time OpenVINO INT8 against fp32 on this host (1 "
                                       "thread, CPU time, interleaved) and mark INT8 `ship: false` when it is "
                                       "not faster")
    openvino_weights: bool = Field(False, description="also an OpenVINO variant with INT8 weights only "
                                   "(nncf.compress_weights), labelled 'int8 weights': about 4x smaller, float "
                                   "activations; faster or not depends on the CPU (bench/int8_variants.py)")
    op_types: list[str] = Field(["MatMul", "Gemm", "Conv"], min_length=1,
                                description="ONNX op types to quantize; LayerNorm, Softmax and GELU stay float")
    preprocess: bool = Field(True, description="ONNX Runtime's quant_pre_process before static quantization")
    max_drop: float = Field(1.0, ge=0, le=100, description="allowed top-1 drop (points) vs fp32 on "
                                                           "validation images before layers fall back to float")
    validation_images: int = Field(1000, ge=1, description="validation images for max_drop and sensitivity")
    max_fallback_layers: int = Field(8, ge=0, description="at most this many layers kept in float")
    on_over_budget: Literal["warn", "stop"] = Field("warn", description="an INT8 model still over max_drop after "
                                                    "the fallback: flag it in the report, or stop the run")
    coreml: CoreMLQuantizeConfig = Field(default_factory=CoreMLQuantizeConfig)
    executorch: ExecuTorchQuantizeConfig = Field(default_factory=ExecuTorchQuantizeConfig)
    litert: LiteRTQuantizeConfig = Field(default_factory=LiteRTQuantizeConfig)


class EvaluateConfig(Section):
    batch_size: int = Field(256, ge=1, description="batch size for running every artifact")
    threads: int = not_in_key(0, "runtime threads; 0 = the CPU cores shared out between the jobs (with one "
                                 "job: the runtime's default)", ge=0)
    jobs: int = not_in_key(0, "artifacts evaluated at once; 0 = one per CPU core", ge=0)


RUNTIME = Literal["onnxruntime", "openvino", "coreml", "executorch", "litert"]


class TargetProfile(Section):
    """A device to benchmark on: what runs there, how to reach it, and its budgets."""

    description: str = Field("", description="what the device is")
    device: Literal["phone", "watch", "board", "laptop", "desktop"] = Field("board", description="device class")
    runtime: RUNTIME = Field(description="the runtime the app ships")
    runtimes: list[RUNTIME] = Field(default_factory=list, description="other runtimes the app could ship instead "
                                    "(e.g. executorch, litert on Android): their artifacts are timed on this "
                                    "target too and compete in the ship rule")
    precision: Literal["int8", "fp16", "fp32"] = Field("int8", description="preferred precision: the report "
                                                                          "recommends it when it meets the budgets")
    threads: int = Field(1, ge=1, le=256, description="runtime threads (batch-1 latency)")
    input_size: int | None = Field(None, ge=4, le=4096, description="H = W of the input; default: the model's")
    memory_budget_mb: float = Field(64.0, gt=0, description="memory the model may add to the app (RSS)")
    latency_budget_ms: float = Field(10.0, gt=0, description="batch-1 p90 latency budget")
    connection: Literal["local", "ssh", "adb", "predicted"] = Field(
        "local", description="local = this host stands in for the device (proxy); ssh / adb = measured on the "
                             "device; predicted = not timed anywhere: latency predicted from public measurements "
                             "of public_device")
    public_device: str | None = Field(None, description="the device's name in Qualcomm AI Hub's public "
                                      "measurements (e.g. 'Samsung Galaxy S24'; `manifold-edge targets` lists "
                                      "them): adds predicted latency rows, beside measured ones when the device "
                                      "is attached")
    public_runtime: Literal["tflite", "qnn_dlc", "onnx"] | None = Field(
        None, description="the AI Hub runtime predicted for: tflite (LiteRT with the NPU delegate; from our litert "
                          "artifacts), qnn_dlc (QNN, compiled from our ONNX), onnx (ONNX Runtime's QNN provider); "
                          "default tflite for runtime litert, onnx for onnxruntime")
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:_-]*$", description="ssh host name or address")
    user: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$", description="ssh user")
    port: int = Field(22, ge=1, le=65535, description="ssh port")
    identity_file: str | None = Field(None, description="ssh private key")
    known_hosts_file: str | None = Field(None, description="ssh known_hosts (default: ~/.ssh/known_hosts)")
    strict_host_key_checking: bool = Field(True, description="refuse unknown ssh host keys; false only for "
                                                             "throwaway lab devices")
    serial: str | None = Field(None, pattern=r"^[A-Za-z0-9.:_-]+$", description="adb device serial "
                                                                              "(default: the only device)")
    python: str = Field("python3", pattern=r"^[A-Za-z0-9/._+-]+$", description="Python on the device "
                        "(adb: Termux's, e.g. /data/data/com.termux/files/usr/bin/python3)")
    remote_dir: str = Field("/tmp", pattern=r"^/[A-Za-z0-9/._-]*$", description="where a per-run temp folder "
                            "is made on the device (adb: /data/local/tmp)")
    compute_units: Literal["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"] = Field(
        "ALL", description="Core ML compute units")
    timeout_s: float = Field(300.0, gt=0, description="give up on the device after this long per model")
    execution_provider: Literal["CPUExecutionProvider", "XnnpackExecutionProvider", "CoreMLExecutionProvider",
                                "NnapiExecutionProvider"] | None = Field(
        None, description="ONNX Runtime execution provider (CPU ops fall back to CPUExecutionProvider); "
                          "default CPUExecutionProvider")
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] | None = Field(
        None, description="ONNX Runtime graph optimisation level; default all (static QDQ INT8 needs extended "
                          "or all to fuse into INT8 kernels)")
    ov_precision_hint: Literal["f32", "bf16", "f16"] | None = Field(
        None, description="OpenVINO INFERENCE_PRECISION_HINT for float layers; default f32")

    @property
    def predicted_runtime(self) -> str | None:
        """The AI Hub runtime this target's predictions are for (None: no public_device)."""
        if not self.public_device:
            return None
        return self.public_runtime or {"litert": "tflite", "onnxruntime": "onnx"}.get(self.runtime)

    @property
    def all_runtimes(self) -> list[str]:
        """`runtime` first, then `runtimes`."""
        return [self.runtime, *(r for r in self.runtimes if r != self.runtime)]

    @model_validator(mode="after")
    def _check(self) -> TargetProfile:
        if "coreml" in self.runtimes and self.runtime != "coreml":
            raise ValueError("runtimes cannot add coreml to a target of another runtime: Core ML runs on Apple "
                             "devices only; make a separate target with runtime = 'coreml'")
        if self.connection == "predicted" and not self.public_device:
            raise ValueError("connection = 'predicted' needs public_device (a device with public measurements: "
                             "`manifold-edge targets` lists them)")
        if self.public_device:
            from targets.predict.predictor import check_public

            check_public(self.public_device, self.predicted_runtime, self.runtime)
        if self.connection == "ssh" and not self.host:
            raise ValueError("a target with connection = 'ssh' needs host (and usually user, identity_file)")
        for field, runtime in (("execution_provider", "onnxruntime"), ("graph_optimization_level", "onnxruntime"),
                               ("ov_precision_hint", "openvino")):
            if getattr(self, field) is not None and self.runtime != runtime:
                raise ValueError(f"{field} applies to runtime = '{runtime}' only, not '{self.runtime}': remove it "
                                 f"or set runtime = '{runtime}'")
        if self.execution_provider == "NnapiExecutionProvider" and self.connection != "adb":
            raise ValueError("execution_provider = 'NnapiExecutionProvider' runs on Android only: use "
                             "connection = 'adb', or execution_provider = 'XnnpackExecutionProvider' / "
                             "'CPUExecutionProvider'")
        if self.execution_provider == "CoreMLExecutionProvider" and self.connection == "adb":
            raise ValueError("execution_provider = 'CoreMLExecutionProvider' runs on Apple devices only, not over "
                             "adb: use 'NnapiExecutionProvider', 'XnnpackExecutionProvider' or "
                             "'CPUExecutionProvider'")
        return self


class BenchmarkConfig(Section):
    enabled: bool = Field(True, description="benchmark every artifact on every target")
    targets: list[str] = Field(default_factory=lambda: ["android-phone", "wearos-watch", "iphone", "apple-watch",
                                                        "x86-laptop", "galaxy-s24-npu-tflite",
                                                        "snapdragon-x-elite-npu"],
                               description="target profiles: built-in names (`manifold-edge targets`) or "
                                           "[targets.NAME] tables")
    runs: int = Field(200, ge=3, le=1_000_000, description="at most this many timed batch-1 runs per artifact "
                                                            "and target (a target's artifacts are timed interleaved)")
    max_seconds: float = Field(5.0, gt=0, description="timing budget per artifact: a target's artifacts, timed "
                                                      "together, stop after max_seconds x their count (at least "
                                                      "one round)")
    warmup: int = Field(10, ge=0, description="untimed runs of each artifact first")
    block_runs: int = Field(5, ge=1, le=10_000, description="runs of one artifact per round-robin turn")
    min_runs: int = Field(20, ge=6, le=1_000_000, description="runs per artifact before the stopping rule is "
                                                              "checked (6 is the fewest with a 95% interval)")
    rel_interval: float = Field(0.05, gt=0, lt=1, description="stop once the 95% interval of every artifact's "
                                                              "median is within this fraction of the median "
                                                              "(else at runs or max_seconds)")
    throughput_batch: int = Field(8, ge=1, le=4096, description="batch size for the throughput figure")
    profile_layers: bool = Field(True, description="per-layer profile (ONNX Runtime, OpenVINO, ExecuTorch)")
    proxy_when_unreachable: bool = Field(True, description="when an ssh/adb device cannot be reached, measure "
                                                           "on this host with the profile's threads (proxy)")


class ReportConfig(Section):
    title: str = Field("manifold-edge run", description="heading of report.md")


class PipelineConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    targets: dict[str, TargetProfile] = Field(default_factory=dict, description="your own target profiles "
                                              "([targets.NAME]); a built-in name here replaces the built-in")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.quantize.openvino and not self.export.openvino:
            raise ValueError("quantize.openvino needs export.openvino = true (it quantizes the IR)")
        if self.quantize.coreml.enabled and not self.export.coreml.enabled:
            raise ValueError("quantize.coreml.enabled needs export.coreml.enabled = true (it compresses the package)")
        bad = [n for n in self.targets if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
        if bad:
            raise ValueError(f"[targets.{bad[0]}]: a target name may use letters, digits, '.', '_' and '-' only")
        if self.benchmark.enabled:
            from targets.profiles import resolve

            try:
                resolve(self.benchmark.targets, self.targets)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        names = [v.name for v in self.quantize.coreml.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"quantize.coreml.variants: names must be unique, got {names}")
        late = [v.name for v in self.quantize.coreml.variants if v.granularity in ("per_block", "per_grouped_channel")
                and self.export.coreml.target not in ("iOS18", "macOS15", "watchOS11")]
        if late:
            raise ValueError(f"quantize.coreml.variants {late}: per_block / per_grouped_channel need "
                             f"export.coreml.target iOS18 (or macOS15, watchOS11), not {self.export.coreml.target}")
        return self

    def section(self, name: str) -> dict:
        if name == "targets":  # the profiles a run benchmarks on, built-ins included: editing one reruns
            from targets.profiles import resolve

            names = self.benchmark.targets if self.benchmark.enabled else []
            return {n: p.key_fields() for n, p in resolve(names, self.targets).items()}
        return getattr(self, name).key_fields()

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path | dict | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read a pipeline.toml (a dict of its tables, or the defaults when path is None), apply `key=value`
    overrides, validate."""
    raw: dict[str, Any] = {}
    if isinstance(path, dict):
        raw, path = copy.deepcopy(path), None
    elif path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found: pass a pipeline.toml path or run from the "
                            "project folder")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                            "save it as UTF-8 TOML") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            raise UserError(f"{path}: nested too deeply to read as TOML (arrays or tables inside each other "
                            "hundreds of levels deep): flatten it") from None
    for item in overrides:
        _apply_override(raw, item)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        source = str(path) if path is not None else "config"
        source = source if len(source) <= 60 else "..." + source[-57:]
        raise UserError("\n".join(f"{source}: {_describe(e, LINE_CHARS - len(source) - 2)}"
                                  for e in exc.errors())) from None
    except RecursionError:
        raise UserError(f"{path or 'config'}: a value nested too deeply (hundreds of levels): flatten it") from None


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UserError(f"--set {_quote(item)}: expected section.key=value, e.g. --set distill.epochs=3")
    if len(parts) > MAX_KEY_DEPTH + 2:
        raise UserError(f"--set {_quote(key)}: {len(parts)} dotted levels; keys are at most {MAX_KEY_DEPTH + 2} "
                        "deep (section.key, or section.overrides.name)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: take it as a string
    except RecursionError:
        raise UserError(f"--set {_quote(item)}: the value is nested too deeply (hundreds of levels)") from None
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {_quote(item)}: {part} is not a section")
    node[parts[-1]] = value


def _describe(err: dict, room: int) -> str:
    """One error as a line of at most `room` characters: a quoted value gets what the rest leaves."""
    loc = clip(".".join(str(p) for p in err["loc"]), 60)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{loc}'{hint}; allowed here: {_listing(allowed)}"
    if err["type"] == "value_error":
        msg = clip(err["msg"].removeprefix("Value error, "), room - len(loc) - 30)
        if loc and msg.split(":", 1)[0] in _allowed_keys(err["loc"]):  # "overrides: ..." of [teacher]
            return f"{loc}.{msg}"
        return f"{loc}: {msg}" if loc and not msg.startswith((loc.split(".")[0], "[")) else msg
    if err["type"] == "missing":
        return f"{loc} is required and missing"
    msg = clip(err["msg"][0].lower() + err["msg"][1:], 100)
    value = clip(repr(err["input"]), max(20, room - len(loc) - len(msg) - 40))
    return f"{loc}: got {value}, but {msg}"


QUOTE_CHARS = 120  # a bad value is quoted up to this many characters
LINE_CHARS = 290  # an error line of the config, at most


def _quote(value: Any) -> str:
    """repr(value), cut to QUOTE_CHARS with the full length said."""
    return clip(repr(value), QUOTE_CHARS)


def _listing(names: list[str], limit: int = 100) -> str:
    """Names joined up to about `limit` characters, then how many more and where they all are."""
    shown = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > limit:
            return f"{', '.join(shown)} and {len(names) - len(shown)} more (docs/configuration.md)"
        shown.append(name)
    return ", ".join(shown)


MAX_KEY_DEPTH = 8  # timm takes flat keyword arguments; a few levels leave room for a dict-valued one
MAX_OVERRIDE = 100_000  # an integer model keyword past this (depth = 1e8) would exhaust memory in the build check


def _depth(value: Any) -> int:
    """How deeply tables and arrays nest in a value (iterative: a hostile value must not recurse)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        deepest = max(deepest, level)
        if level <= MAX_KEY_DEPTH and isinstance(item, (dict, list)):
            todo += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    parts = list(loc)
    while parts:
        annotation = model.model_fields[parts.pop(0)].annotation
        if get_origin(annotation) is dict and parts:  # a table of tables: [targets.NAME]
            annotation = get_args(annotation)[1]
            parts.pop(0)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def json_schema() -> dict:
    return PipelineConfig.model_json_schema()
