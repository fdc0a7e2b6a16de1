"""Teacher sources (scratch, local checkpoint, timm pretrained from a local file) and student variants."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch

from conftest import cli_args, read_report
from pipeline.cli import main
from pipeline.core.errors import UserError
from pipeline.core.stage import Accel
from stages.distill.families import units_of
from stages.models import create_model, load_model, load_weights, save_model

DATA = {"in_chans": 1, "num_classes": 10, "img_size": 28}
VIT = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_and_load_roundtrip(tmp_path):
    model, kwargs = create_model("teacher", "convstem_vit_small", {"embed_dim": 32, "depth": 2, "num_heads": 2}, DATA)
    save_model(tmp_path / "model.pt", model, "convstem_vit_small", kwargs)
    loaded, record = load_model(tmp_path / "model.pt")
    assert record["kwargs"]["embed_dim"] == 32 and _same(model, loaded)


@pytest.mark.parametrize("wrap", ["ours", "plain", "timm"])
def test_checkpoint_formats_load(tmp_path, wrap):
    source, kwargs = create_model("teacher", "vit_tiny_patch16_224", VIT, DATA)
    file = tmp_path / "ckpt.pt"
    if wrap == "ours":
        save_model(file, source, "vit_tiny_patch16_224", kwargs)
    else:
        state = source.state_dict()
        torch.save(state if wrap == "plain" else {"model": state, "epoch": 3}, file)
    target, _ = create_model("teacher", "vit_tiny_patch16_224", VIT, DATA)
    assert not _same(source, target)
    load_weights("teacher", target, str(file))
    assert _same(source, target)


def test_checkpoint_errors_name_the_field(tmp_path):
    model, _ = create_model("teacher", "vit_tiny_patch16_224", VIT, DATA)
    with pytest.raises(UserError, match="teacher.checkpoint = .* does not exist"):
        load_weights("teacher", model, str(tmp_path / "nope.pt"))
    other, _ = create_model("teacher", "vit_tiny_patch16_224", {**VIT, "embed_dim": 48}, DATA)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"does not fit teacher.model: tensor 'cls_token' is \(1, 1, 48\), the "
                                        r"model needs \(1, 1, 32\)"):
        load_weights("teacher", model, str(tmp_path / "other.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds no state dict"):
        load_weights("teacher", model, str(tmp_path / "list.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"teacher.checkpoint = .*text.pt' is not a torch checkpoint \(") as info:
        load_weights("teacher", model, str(tmp_path / "text.pt"))
    assert "\n" not in str(info.value)


def test_timm_pretrained_true_loads_a_local_weights_file(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", **VIT, **DATA)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model, _ = create_model("teacher", "vit_tiny_patch16_224", VIT, DATA, pretrained=True,
                            pretrained_file=str(tmp_path / "weights.pth"))
    # timm keeps the backbone and, as the class count differs from ImageNet's, re-initialises the head
    body = [k for k in source.state_dict() if not k.startswith("head.")]
    assert len(body) > 10
    assert all(torch.equal(source.state_dict()[k], model.state_dict()[k]) for k in body)
    assert not torch.equal(source.head.weight, model.head.weight)


def test_pretrained_weights_without_the_network_are_one_line_naming_the_fix(tmp_path, monkeypatch):
    """A model timm publishes weights for, asked for offline with an empty hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as info:
        create_model("teacher", "vit_tiny_patch16_224", {}, {"in_chans": 3, "num_classes": 10, "img_size": 224},
                     pretrained=True)
    message = str(info.value)
    assert message.startswith("teacher.pretrained = true: timm could not download 'vit_tiny_patch16_224'")
    assert "teacher.pretrained_file" in message and "\n" not in message and len(message) < 400


def test_model_errors_are_user_errors():
    with pytest.raises(UserError, match="did you mean.*vit_tiny_patch16_224"):
        create_model("student", "vit_tiny_patch16_24", {}, DATA)
    with pytest.raises(UserError, match="student.overrides.in_chans = 3 contradicts the data"):
        create_model("student", "vit_tiny_patch16_224", {"in_chans": 3}, DATA)


@pytest.mark.slow
def test_ablations(tmp_path):
    """Every ablation runs and logs its terms (a distilled DeiT student and other families: test_model_zoo)."""
    for extra in (["distill.kd='none'"], ["distill.kd='hard'", "distill.manifold=false"],
                  ["distill.kd='none'", "distill.manifold=false"],
                  ["distill.w_intra=0.0", "distill.w_inter=0.0"]):
        assert main(cli_args(tmp_path, "run", *extra) + ["--until", "distill"]) == 0, extra
        row = read_report(tmp_path)["curves"]["distill"][0]
        assert ("kd" in row) == ("distill.kd='none'" not in extra)
        assert ("intra" in row) == (extra == ["distill.kd='none'"])
        assert ("random" in row) == ("distill.manifold=false" not in extra)


def test_a_cnn_teacher_distils_with_the_manifold_terms_on_its_stages(tmp_path):
    """timm CNNs take no img_size keyword: built without it; their feature_info stages are the teacher's units,
    NCHW maps read as token grids and pooled onto the student's 7x7 patch grid."""
    cnn = ["teacher.model='resnet10t'", "teacher.overrides={}"]
    assert main(cli_args(tmp_path, "run", *cnn) + ["--until", "distill"]) == 0
    report = read_report(tmp_path)
    teacher, distill = report["stages"]["teacher"]["summary"], report["stages"]["distill"]["summary"]
    assert teacher["model"] == "resnet10t" and teacher["params"] > 1_000_000
    assert distill["teacher_layers"] == [0, 4] and distill["student_layers"] == [0, 1]
    assert all(report["curves"]["distill"][0][term] > 0 for term in ("intra", "inter", "random"))


def test_augmented_grayscale_batches_have_plain_nchw_strides():
    from stages.batches import augment

    x = augment(torch.rand(8, 1, 28, 28), torch.Generator().manual_seed(0), shift=2, flip=True)
    assert x.stride() == (784, 784, 28, 1)  # not the gather's channels-last (784, 1, 28, 1)


def test_models_train_channels_last_on_cpu_except_where_onednn_s_avx2_kernel_breaks(caplog):
    """The conv-stem ViT's convolutions run channels-last (its stem is faster so); a RepVGG on grayscale keeps
    NCHW: its 1-channel stride-2 1x1 branch is the layout whose AVX2 weight-gradient kernel corrupts the heap."""
    from stages.training import place

    caplog.set_level("INFO")
    data = {"in_chans": 1, "num_classes": 10, "img_size": 32}
    vit, _ = create_model("student", "convstem_vit_tiny", {}, data)
    cnn, _ = create_model("teacher", "repvgg_a0", {}, {"in_chans": 1, "num_classes": 10})
    on = Accel(channels_last=True)
    assert place(vit, "cpu", on).patch_embed.proj[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(a.fused_attn for a in vit.modules() if hasattr(a, "fused_attn"))  # 17 tokens: the math path
    assert place(cnn, "cpu", on).stem.conv_kxk.conv.weight.is_contiguous()
    assert "repvgg_a0 runs in NCHW on CPU, not channels-last" in caplog.text
    off, _ = create_model("student", "convstem_vit_tiny", {}, data)
    assert place(off, "cpu", Accel(channels_last=False)).patch_embed.proj[3].weight.is_contiguous()
    off.load_state_dict(vit.state_dict())
    x = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(vit.eval()(x), off.eval()(x))  # the same maths in either layout


def test_resumed_optimizer_state_takes_the_weights_layout():
    """Fused AdamW pairs a weight's elements with its moments' by position: moments saved channels-first and
    resumed into channels-last weights (run.channels_last toggled before the rerun) would update the wrong
    elements. After state_like_params the resumed run updates exactly as the uninterrupted one."""
    from stages.training import state_like_params

    x = torch.randn(2, 4, 8, 8)

    def trained(layout_after_resume, mend):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(4, 8, 3)
        optimizer = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
        for step in range(4):
            if step == 1:  # the resume: a checkpoint written channels-first, loaded, then the weights converted
                saved = optimizer.state_dict()
                optimizer = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
                optimizer.load_state_dict(saved)
                conv.to(memory_format=layout_after_resume)
                if mend:
                    state_like_params(optimizer)
            conv(x).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        return conv.weight.detach().contiguous()

    reference = trained(torch.contiguous_format, mend=False)
    assert not torch.allclose(trained(torch.channels_last, mend=False), reference)  # the silent corruption
    torch.testing.assert_close(trained(torch.channels_last, mend=True), reference)


@pytest.mark.slow
def test_a_repvgg_teacher_on_grayscale_trains_through_the_cli_on_avx2_kernels(repvgg_teacher_run):
    """The conditions that corrupted the heap (glibc abort, segfault or hang, within a few steps): a RepVGG
    teacher (1x1 stride-2 stem branch, 1 input channel), augmented batches, one thread, oneDNN's AVX2 kernels
    (conftest.EARLY: the CLI run, in a background process started at collection)."""
    log = repvgg_teacher_run.log.read_text()
    assert repvgg_teacher_run.proc.returncode == 0, log[-2000:]
    assert "teacher repvgg_a0 (scratch)" in log


def test_a_teacher_on_a_coarser_grid_than_the_student_is_matched_on_the_teacher_s_grid(tmp_path):
    args = cli_args(tmp_path, "run", "data.img_size=32", "teacher.overrides.patch_size=8")
    assert main(args + ["--until", "distill"]) == 0
    assert read_report(tmp_path)["curves"]["distill"][0]["intra"] > 0


def test_a_family_without_an_adapter_is_named_in_one_line():
    with pytest.raises(UserError, match=r"no token adapter knows this family \(its modules: stem, head\)"):
        units_of(torch.nn.Sequential(OrderedDict(stem=torch.nn.Conv2d(1, 4, 3), head=torch.nn.Flatten())), "student")


@pytest.mark.parametrize("layers, expected", [
    (("distill.student_layers=[0, 9]", "distill.teacher_layers=[0, 1]"),
     "distill.student_layers: [9] out of range for 2 units (valid 0..1: blocks.0..blocks.1)"),
    (("distill.student_layers=[0]", "distill.teacher_layers=[0, 1]"), "must pair up"),
])
def test_bad_layer_maps_are_user_errors(tmp_path, capsys, layers, expected):
    assert main(cli_args(tmp_path, "run", *layers) + ["--until", "distill"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))  # before the teacher


def test_the_paper_s_pairing_a_cait_teacher_distils_a_deit_student_with_the_manifold_loss(tmp_path):
    """CaiT's self-attention blocks carry patch tokens only (its class token joins later): the taps take the
    last H*W tokens of every block, so CaiT (no prefix) and a distilled DeiT (two prefix tokens) line up."""
    cait = ["teacher.model='cait_xxs24_224'",
            "teacher.overrides={patch_size=8, embed_dim=32, depth=2, depth_token_only=1, num_heads=2}",
            "student.model='deit_tiny_distilled_patch16_224'",
            "student.overrides={patch_size=8, embed_dim=16, depth=2, num_heads=2}"]
    assert main(cli_args(tmp_path, "run", *cait) + ["--until", "distill"]) == 0
    row = read_report(tmp_path)["curves"]["distill"][0]
    assert {"intra", "inter", "random"} <= set(row) and all(row[t] > 0 for t in ("intra", "inter", "random"))
