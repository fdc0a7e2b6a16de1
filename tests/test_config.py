"""Config errors: one line naming the field, what was given and what is allowed; exit 2, no traceback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import PipelineConfig, load_config
from pipeline.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_default_pipeline_toml_is_valid():
    cfg = load_config(ROOT / "pipeline.toml")
    assert cfg.data.dataset == "fashion-mnist"
    assert cfg.distill.manifold and cfg.distill.kd == "soft"


@pytest.mark.parametrize("override, fragment", [
    ("distill.epochs='three'", "distill.epochs: got 'three'"),
    ("distill.epochs=-1", "greater than or equal to 1"),
    ("distill.alpha=1.5", "distill.alpha: got 1.5"),
    ("distill.kd='soft-ish'", "'none', 'soft' or 'hard'"),
    ("run.device='gpu'", "'auto', 'cpu' or 'cuda'"),
    ("run.seed=1.5", "run.seed: got 1.5"),
    ("data.channels=2", "data.channels: got 2"),
    ("distill.manifold='yes'", "distill.manifold: got 'yes'"),
    ("distill.student_layers=[0, 1]", "give both distill.student_layers and distill.teacher_layers"),
    ("teacher.overrides=3", "teacher.overrides: got 3"),
    ("data.mean=[0.1, 0.2]", "data.mean needs 1 value"),
])
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_misspelt_key_suggests_the_close_match():
    with pytest.raises(UserError, match=r"unknown key 'distill.epoch' \(did you mean 'epochs'\?\)"):
        load_config(None, ["distill.epoch=3"])
    with pytest.raises(UserError, match=r"unknown key 'techer' \(did you mean 'teacher'\?\)"):
        load_config(None, ["techer.epochs=3"])


def test_toml_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill]\nepochs = 3\nw_intro = 4.0\n")
    with pytest.raises(UserError, match=r"bad.toml: unknown key 'distill.w_intro' \(did you mean 'w_intra'"):
        load_config(bad)
    bad.write_text("[distill\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_the_paper_preset_is_one_setting_over_the_files_weights():
    cfg = load_config(ROOT / "pipeline.toml", ["distill.preset=paper", "distill.w_inter=0.5"])
    assert (cfg.distill.alpha, cfg.distill.w_intra, cfg.distill.w_inter, cfg.distill.k) == (1.0, 4.0, 0.1, 192)
    assert load_config(ROOT / "pipeline.toml").distill.alpha == 0.5


def test_set_overrides_parse_toml_values_and_bare_strings():
    cfg = load_config(None, ["distill.epochs=3", "run.name=quick", "distill.student_layers=[0, 3]",
                             "distill.teacher_layers=[0, 5]", "teacher.overrides.embed_dim=96"])
    assert cfg.distill.epochs == 3 and cfg.run.name == "quick"
    assert cfg.distill.student_layers == [0, 3] and cfg.teacher.overrides == {"embed_dim": 96}
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, ["distill.epochs"])


def test_cli_user_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text("[distill]\nepochs = 'many'\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "distill.epochs: got 'many'" in lines[0]


def test_cli_unknown_stage_name_is_a_user_error(tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text("")
    assert main(["run", "--config", str(config), "--until", "distil"]) == 2
    assert "no such stage" in capsys.readouterr().err


def test_schema_command_prints_the_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == PipelineConfig.model_json_schema()
    assert {"run", "data", "teacher", "student", "distill", "report"} <= set(schema["properties"])


@pytest.mark.parametrize("override, fragment", [
    ("run.seed=18446744073709551616", "run.seed: got 18446744073709551616, but input should be less than or equal"),
    ("teacher.warmup_epochs=inf", "teacher.warmup_epochs: got inf, but input should be a finite number"),
    ("distill.lr=nan", "distill.lr: got nan, but input should be a finite number"),
    ("data.std=[inf]", "data.std.0: got inf, but input should be a finite number"),
    ("targets.t.timeout_s=inf", "targets.t.timeout_s: got inf, but input should be a finite number"),
    ("distill.w_intra='" + "x" * 100_000 + "'", "... (100,002 characters), but input should be a valid number"),
    ("run.name=" + "[" * 3000 + "]" * 3000, "the value is nested too deeply"),
])
def test_hostile_values_are_one_short_line_naming_the_field(override, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [override, "targets.t.runtime='onnxruntime'"])
    assert fragment in str(info.value) and all(len(line) < 300 for line in str(info.value).splitlines())


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe\x00garbage\x80", "not UTF-8 text (byte 0xff at offset 0): save it as UTF-8 TOML"),
    (b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deeply to read as TOML"),
])
def test_a_pipeline_toml_that_is_not_toml_text_is_one_line(tmp_path, content, fragment):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(fragment)):
        load_config(bad)


@pytest.mark.parametrize("overrides, fragment", [
    (["data.img_size=30"], "teacher.model = 'convstem_vit_small' cannot take a 1 x 30 x 30 image"),
    (["teacher.overrides.depth=-1"], "teacher: timm could not build 'convstem_vit_small'"),
    (["teacher.pretrained=true"], "timm publishes no weights for 'convstem_vit_small'"),
    (["teacher.pretrained=true", "teacher.pretrained_file='/etc/hostname'"],
     "teacher.pretrained_file = '/etc/hostname' is not a checkpoint"),
])
def test_a_model_that_cannot_be_built_or_run_stops_before_anything_is_written(tmp_path, capsys, overrides,
                                                                                fragment):
    runs = tmp_path / "runs"
    args = ["run", "--set", f"run.output_dir='{runs}'"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and len(err) < 300
    assert not runs.exists() or not any(runs.rglob("*.pt"))


def test_an_output_dir_that_is_a_file_or_unreachable_is_one_line_before_anything_runs(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for folder, why in ((afile, "is a file"), (afile / "runs", "is a file"), ("/proc/none/runs", "cannot write")):
        assert main(["run", "--set", f"run.output_dir='{folder}'"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"run.output_dir = '{folder}'" in err and why in err and len(err.splitlines()) == 1


def test_overrides_nested_thousands_deep_in_a_file_are_one_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("[teacher.overrides]\n" + "a." * 5000 + "b = 1\n")
    with pytest.raises(UserError) as info:
        load_config(deep)
    assert "teacher.overrides: tables nested more than 8 levels deep" in str(info.value)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)


LONG = "x" * 300  # one path component longer than any file system takes


@pytest.mark.parametrize("overrides, fragment", [
    ([f"{'k' * 100_000}.epochs=3"], "unknown key 'kkkk"),
    ([f"teacher.overrides.{'a.' * 5000}b=1"], "5003 dotted levels; keys are at most 10 deep"),
    (["teacher.overrides.foo='" + "v" * 100_000 + "'"], "rejected the keywords"),
    ([f"run.name='{'n' * 300}'"], "run.name: got 'nnnn"),
    (["teacher.overrides.depth=100000000"], "teacher.overrides: depth = 100,000,000 is past any model"),
    ([f"teacher.checkpoint='/tmp/{LONG}/model.pt'"], "file name too long: '/tmp/xxxx"),
    (["data.dataset='imagefolder'", f"data.path='/tmp/{LONG}'"], "file name too long"),
])
def test_huge_deep_and_overlong_values_are_one_short_line(tmp_path, capsys, overrides, fragment):
    args = ["run", "--set", f"run.output_dir='{tmp_path / 'runs'}'"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and len(err) < 300, err[:2000]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.npz"))


@pytest.mark.parametrize("overrides, fragment", [
    (["data.subset=1"], "data.subset = 1 leaves no training images"),
    (["teacher.checkpoint='/etc'"], "teacher.checkpoint = '/etc' is a folder: give the file itself"),
    (["--nproc", "0"], "--nproc 0: give at least 1 process"),
])
def test_inputs_that_used_to_mislead_say_what_is_wrong(tmp_path, capsys, overrides, fragment):
    args = ["run", "--set", f"run.output_dir='{tmp_path / 'runs'}'"]
    args += overrides if overrides[0].startswith("--") else [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.npz"))


def test_each_stage_declares_its_config_model_beside_it():
    """A stage's section is declared in the stage's own module (Olive's pass-with-its-config shape); only the
    engine's sections ([run], [report]) live in pipeline/config.py."""
    from pipeline.config import PipelineConfig
    from pipeline.graph import STAGES

    homes = {name: PipelineConfig.model_fields[name].annotation.__module__ for name in PipelineConfig.model_fields
             if name != "targets"}
    assert {name: homes[name] for name in STAGES} == {name: spec.partition(":")[0] for name, spec in STAGES.items()}
    assert {name for name, home in homes.items() if home == "pipeline.config"} == {"run", "report"}


@pytest.mark.parametrize("overrides, fragment", [
    (["export.openvino=false"], "quantize.openvino needs export.openvino = true"),
    (["export.openvino=false", "quantize.openvino=false", "quantize.openvino_weights=true"],
     "quantize.openvino_weights needs export.openvino = true"),  # was a KeyError in the quantize stage
])
def test_a_quantizer_without_the_export_it_reads_is_one_line(overrides, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        load_config(None, overrides)
