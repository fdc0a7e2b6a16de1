"""The model zoo (bench/model_zoo.py): every family through distill (manifold loss) -> export -> quantize ->
evaluate, on shrunk configs; OpenVINO's NNCF INT8, the accuracy fallback, ExecuTorch and LiteRT are left to the
bench and to tests/test_export_quantize.py, test_executorch.py and test_litert.py, to keep the zoo inside the
suite's time."""
from __future__ import annotations

import pytest

from bench.model_zoo import ZOO, row

FAMILIES = {"deit_tiny_distilled": "vit", "cait_xxs24": "cait", "vit_registers": "vit"}
# CNN students and a second plain ViT: the bench runs them (bench/results/model_zoo.json); the suite keeps
# one of each transformer family within its 8 minutes
BENCH_ONLY = {"resnet18", "mobilenetv3_small", "vit_registers"}
LEANER = ("quantize.openvino=false", "quantize.onnx_dynamic=false", "quantize.max_drop=100.0",
          "export.executorch.enabled=false", "export.litert.enabled=false")  # the bench runs those (tens of s each)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - BENCH_ONLY))
def test_a_zoo_family_goes_through_every_stage(name, zoo_report):
    """`zoo_report` (conftest): run_model(name, folder, LEANER) in a background process started at collection."""
    report = zoo_report
    r = row(name, report)
    assert r["family"] == FAMILIES.get(name, "hierarchical")
    assert r["matched_units"] and all(s and t for s, t in r["matched_units"])
    terms = report["curves"]["distill"][0]
    assert all(terms[t] > 0 for t in ("intra", "inter", "random")), terms
    assert set(r["parity"]) == {"onnx", "openvino", "coreml"}
    for key, parity in r["parity"].items():
        assert parity["argmax_agreement"] >= 0.99, (key, parity)
    artifacts = r["artifacts"]
    assert {"torch_fp32", "onnx", "openvino", "coreml", "onnx_int8_static", "coreml_int8"} <= set(artifacts)
    for key, artifact in artifacts.items():
        assert artifact["top1"] is not None and 0 <= artifact["agreement"] <= 1, (key, artifact)
    assert artifacts["onnx"]["agreement"] == 1.0
    if name == "deit_tiny_distilled":
        assert report["stages"]["distill"]["summary"]["distilled_head"] is True
