"""A teacher no better than guessing is said on the console and on the report's first screen (issue 41)."""
from __future__ import annotations

import pytest

from conftest import cli_args, read_report
from pipeline.cli import main
from stages.evaluate import chance_warnings


def test_chance_level_is_judged_with_the_interval_of_top1():
    result = {"images": 200, "teacher": {"model": "t", "top1": 8.5}, "student": {"model": "s", "top1": 15.5}}
    [teacher] = chance_warnings(result, classes=10)  # 15.5% on 200 images: 11.1-21.1%, above chance
    assert teacher.startswith("the teacher t scores 8.50% top-1 on 200 test images of 10 classes (95% interval "
                              "5.4-13.2%): no better than guessing (10.0%); train it longer")
    assert chance_warnings({**result, "teacher": {"model": "t", "top1": 80.0}}, classes=10) == []


@pytest.mark.slow
def test_a_run_with_a_teacher_at_chance_says_so(tmp_path, capsys):
    """teacher.lr = 1e-9: the teacher stays as initialised (seeded), at chance on 10 classes."""
    args = cli_args(tmp_path, "run", "teacher.lr=1e-9", "teacher.warmup_epochs=0", "quantize.onnx_static=false",
                    "quantize.openvino=false", "export.coreml.enabled=false", "quantize.coreml.enabled=false",
                    "benchmark.targets=['x86-laptop']")
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "the teacher" in err and "no better than guessing (10.0%)" in err
    ship = out.split("deploy: ")[1].splitlines()  # the ship answer says so before its pick, and so does the folder
    assert ship[1].startswith("  warning: the teacher ") and "no better than guessing" in ship[1]
    readme = (tmp_path / "runs" / "default" / "deploy" / "x86-laptop" / "README.md").read_text()
    assert "> **Warning**: the teacher " in readme.split("Overall pick")[0]
    report = read_report(tmp_path)
    assert any(w.startswith("the teacher ") for w in report["evaluation"]["warnings"])
    first_screen = (tmp_path / "runs" / "default" / "report.md").read_text().split("## Ship")[0]
    assert "> **Warning**: the teacher " in first_screen
