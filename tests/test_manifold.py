"""The manifold loss terms against direct float64 computations written differently (loops, einsum)."""
from __future__ import annotations

import pytest
import torch

from stages.distill.features import TokenTap, aligned_tokens, default_layer_map
from stages.distill.manifold import ManifoldLoss, inter_image_loss, intra_image_loss, random_sampled_loss


def _tokens(b=3, n=5, ds=4, dt=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, ds, generator=g, dtype=torch.float64), \
        torch.randn(b, n, dt, generator=g, dtype=torch.float64)


def _cos(u, v):
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def test_intra_matches_explicit_loops():
    fs, ft = _tokens()
    b, n, _ = fs.shape
    total = sum((_cos(fs[k, i], fs[k, j]) - _cos(ft[k, i], ft[k, j])) ** 2
                for k in range(b) for i in range(n) for j in range(n))
    assert intra_image_loss(fs, ft).item() == pytest.approx(total / (b * n * n), rel=1e-6)


def test_inter_matches_explicit_loops():
    fs, ft = _tokens()
    b, n, _ = fs.shape
    total = sum((_cos(fs[i, p], fs[j, p]) - _cos(ft[i, p], ft[j, p])) ** 2
                for p in range(n) for i in range(b) for j in range(b))
    assert inter_image_loss(fs, ft).item() == pytest.approx(total / (n * b * b), rel=1e-6)


def test_random_with_all_tokens_equals_full_relation_loss():
    fs, ft = _tokens(b=4, n=6)
    s = fs.reshape(-1, fs.shape[-1]) / fs.reshape(-1, fs.shape[-1]).norm(dim=1, keepdim=True)
    t = ft.reshape(-1, ft.shape[-1]) / ft.reshape(-1, ft.shape[-1]).norm(dim=1, keepdim=True)
    full = torch.einsum("id,jd->ij", s, s) - torch.einsum("id,jd->ij", t, t)
    expected = (full ** 2).sum() / full.numel()
    got = random_sampled_loss(fs, ft, k=fs.shape[0] * fs.shape[1], generator=torch.Generator().manual_seed(3))
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    # K larger than B*N is clamped, not an error
    assert random_sampled_loss(fs, ft, k=10_000).item() == pytest.approx(expected.item(), rel=1e-9)


def test_random_subset_uses_same_tokens_on_both_sides():
    fs, ft = _tokens(b=4, n=6)
    picked = torch.randperm(24, generator=torch.Generator().manual_seed(7))[:5]
    s = torch.nn.functional.normalize(fs.reshape(24, -1)[picked], dim=1)
    t = torch.nn.functional.normalize(ft.reshape(24, -1)[picked], dim=1)
    expected = ((s @ s.T - t @ t.T) ** 2).mean()
    got = random_sampled_loss(fs, ft, k=5, generator=torch.Generator().manual_seed(7))
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("term", [intra_image_loss, inter_image_loss,
                                  lambda s, t: random_sampled_loss(s, t, 8)])
def test_zero_for_identical_features_and_positive_otherwise(term):
    fs, ft = _tokens(ds=6, dt=6)
    assert term(fs, fs.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert term(fs, ft).item() > 1e-3


@pytest.mark.parametrize("term", [intra_image_loss, inter_image_loss])
def test_invariant_to_token_scaling(term):
    fs, ft = _tokens()
    scale = torch.rand(fs.shape[0], fs.shape[1], 1, dtype=torch.float64) * 10 + 0.1
    assert term(fs * scale, ft).item() == pytest.approx(term(fs, ft).item(), rel=1e-9)
    assert term(fs, ft * 3.5).item() == pytest.approx(term(fs, ft).item(), rel=1e-9)


def test_gradient_flows_to_student_only():
    fs, ft = _tokens()
    fs.requires_grad_(True)
    ft.requires_grad_(True)
    terms = ManifoldLoss(k=6)([fs], [ft], torch.Generator().manual_seed(0))
    sum(terms.values()).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert ft.grad is None


def _explicit_relation_mse(s, t):
    s, t = torch.nn.functional.normalize(s, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    return ((torch.einsum("...id,...jd->...ij", s, s) - torch.einsum("...id,...jd->...ij", t, t)) ** 2).mean()


@pytest.mark.parametrize("term", ["intra", "inter", "random"])
def test_gradient_equals_autograd_through_the_explicit_formula(term):
    """The loss's own backward (one matmul, from the difference's symmetry) against autograd through einsum."""
    fs, ft = _tokens(b=3, n=5, ds=4, dt=7)
    explicit = {"intra": lambda s, t: _explicit_relation_mse(s, t),
                "inter": lambda s, t: _explicit_relation_mse(s.transpose(0, 1), t.transpose(0, 1)),
                "random": lambda s, t: _explicit_relation_mse(s.flatten(0, 1), t.flatten(0, 1))}[term]
    ours = {"intra": intra_image_loss, "inter": inter_image_loss,
            "random": lambda s, t: random_sampled_loss(s, t, k=15, generator=torch.Generator().manual_seed(0))}[term]
    grads = []
    for loss in (ours, explicit):  # K = B*N draws every token: the random term is then order-free
        s = fs.clone().requires_grad_(True)
        loss(s, ft).backward()
        grads.append(s.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda s: ours(s, ft), fs.clone().requires_grad_(True))


def test_weights_and_layer_average():
    fs, ft = _tokens()
    fs2, ft2 = _tokens(seed=1)
    loss = ManifoldLoss(w_intra=2.0, w_inter=0.5, w_random=0.0, beta=3.0)
    terms = loss([fs, fs2], [ft, ft2])
    assert set(terms) == {"intra", "inter"}  # a zero weight skips the term
    expected_intra = 3.0 * 2.0 * (intra_image_loss(fs, ft) + intra_image_loss(fs2, ft2)) / 2
    assert terms["intra"].item() == pytest.approx(expected_intra.item(), rel=1e-9)
    expected_inter = 3.0 * 0.5 * (inter_image_loss(fs, ft) + inter_image_loss(fs2, ft2)) / 2
    assert terms["inter"].item() == pytest.approx(expected_inter.item(), rel=1e-9)


def test_mismatched_shapes_are_rejected():
    fs, _ = _tokens(n=5)
    _, ft = _tokens(n=6)
    with pytest.raises(ValueError, match="equal B and N"):
        intra_image_loss(fs, ft)


def test_default_layer_map_is_the_papers_first_and_last_third():
    assert default_layer_map(12, 24) == ([0, 1, 2, 3, 8, 9, 10, 11], [0, 1, 2, 3, 20, 21, 22, 23])
    assert default_layer_map(4, 6) == ([0, 3], [0, 5])
    assert default_layer_map(6, 12) == ([0, 1, 4, 5], [0, 1, 10, 11])
    assert default_layer_map(2, 2) == ([0, 1], [0, 1])


def test_the_finer_grid_is_pooled_onto_the_coarser_whichever_side_it_is_on():
    fine = torch.arange(16, dtype=torch.float64).view(1, 4, 4, 1)  # a 4x4 grid, row-major
    coarse = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    for student, teacher in ((coarse, fine), (fine, coarse)):
        s, t = aligned_tokens(student, teacher)
        pooled = t if teacher is fine else s
        assert s.shape[:2] == t.shape[:2] == (1, 4)
        assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_non_integer_grid_ratios_pool_adaptively():
    s, t = aligned_tokens(torch.randn(2, 7, 7, 5), torch.ones(2, 4, 4, 3))
    assert s.shape == (2, 16, 5) and t.shape == (2, 16, 3)
    mean = torch.arange(49.0).view(1, 7, 7, 1)
    cells = aligned_tokens(mean, torch.zeros(1, 4, 4, 1))[0].flatten()
    assert cells[0] == mean[0, :2, :2].mean() and cells[-1] == mean[0, 5:, 5:].mean()  # overlapping 2x2 windows


def test_layer_pairs_are_matched_in_the_order_written():
    """student_layers = [3, 0] pairs block 3 with the first teacher layer given, though block 0 runs first."""
    import timm

    import stages.models  # noqa: F401  (registers convstem_vit_*)

    torch.manual_seed(0)
    model = timm.create_model("convstem_vit_tiny").eval()
    written, forward = TokenTap(model, [3, 0], "student"), TokenTap(model, [0, 3], "student")
    with torch.no_grad(), written.capture() as as_written, forward.capture() as in_order:
        model(torch.randn(2, 1, 32, 32))
        got = list(as_written), list(in_order)
    assert torch.equal(got[0][0], got[1][1]) and torch.equal(got[0][1], got[1][0])
    assert not torch.equal(got[0][0], got[0][1])


@pytest.mark.parametrize("shape", [(3, 5, 4, 7), (8, 16, 12, 24)])
def test_equals_the_official_code_loss_and_gradient(shape):
    """ManifoldLoss against bench/official_loss.py (the authors' mf_loss wiring), same weights, same K-draw."""
    from bench.official_loss import mf_loss

    b, n, ds, dt = shape
    student = [_tokens(b, n, ds, dt, seed)[0] for seed in range(3)]
    teacher = [_tokens(b, n, ds, dt, seed)[1] for seed in range(3)]
    ours_s = [s.clone().requires_grad_(True) for s in student]
    official_s = [s.clone().requires_grad_(True) for s in student]
    k, beta = b * n // 2, 1.5
    ours = ManifoldLoss(4.0, 0.1, 0.2, k, beta)(ours_s, teacher, torch.Generator().manual_seed(5))
    sample, patch, rand = mf_loss(official_s, teacher, k, 0.1, 4.0, 0.2, torch.Generator().manual_seed(5))
    official = {"intra": beta * patch, "inter": beta * sample, "random": beta * rand}
    for name in official:
        torch.testing.assert_close(ours[name], official[name], rtol=1e-12, atol=0)
    sum(ours.values()).backward()
    sum(official.values()).backward()
    for a, b_ in zip(ours_s, official_s):
        torch.testing.assert_close(a.grad, b_.grad, rtol=1e-12, atol=1e-15)


def test_official_code_draws_from_the_global_stream_without_a_generator():
    """With no generator the re-expression draws as the authors' code does, from the global stream."""
    from bench.official_loss import layer_mf_loss

    fs, ft = _tokens(b=4, n=6)
    with torch.random.fork_rng():
        torch.manual_seed(9)
        unseeded = layer_mf_loss(fs, ft, 5)[2]
    assert unseeded == layer_mf_loss(fs, ft, 5, torch.Generator().manual_seed(9))[2]
    torch.testing.assert_close(unseeded, random_sampled_loss(fs, ft, 5, torch.Generator().manual_seed(9)),
                               rtol=1e-12, atol=0)


def test_all_three_terms_together_pass_gradcheck():
    """The pair's one backward (three terms' gradients meet before the normalisation's) against finite differences."""
    fs, ft = _tokens(b=3, n=4, ds=5, dt=6)
    fs2, ft2 = _tokens(b=3, n=4, ds=5, dt=6, seed=1)
    loss = ManifoldLoss(4.0, 0.1, 0.2, k=7)

    def value(a, b):
        return sum(loss([a, b], [ft, ft2], torch.Generator().manual_seed(2)).values())
    assert torch.autograd.gradcheck(value, (fs.clone().requires_grad_(True), fs2.clone().requires_grad_(True)))


def test_a_zero_token_gets_the_gradient_of_f_normalize():
    """A token of norm 0 (a dead ReLU position) is clamped by eps as F.normalize does; so is its gradient."""
    fs, ft = _tokens(b=3, n=5, ds=4, dt=7)
    fs[1, 2] = 0
    grads = []
    def explicit(s):
        return _explicit_relation_mse(s, ft) + _explicit_relation_mse(s.transpose(0, 1), ft.transpose(0, 1))

    for loss in (lambda s: intra_image_loss(s, ft) + inter_image_loss(s, ft), explicit):
        s = fs.clone().requires_grad_(True)
        loss(s).backward()
        grads.append(s.grad)
    assert grads[0][1, 2].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_token_memory_layout_changes_nothing():
    """Sliced student tokens and teacher tokens transposed in memory (CaiT's blocks) give the contiguous values."""
    fs, ft = _tokens(b=4, n=6, ds=5, dt=7)
    padded = torch.cat([torch.randn(4, 1, 5, dtype=torch.float64), fs], 1)[:, 1:]  # a prefix token sliced off
    transposed = ft.transpose(1, 2).contiguous().transpose(1, 2)
    assert not padded.is_contiguous() and not transposed.is_contiguous()
    results = []
    for s, t in ((fs, ft), (padded, transposed)):
        s = s.clone().requires_grad_(True) if s is fs else s.detach().requires_grad_(True)
        terms = ManifoldLoss(k=9)([s], [t], torch.Generator().manual_seed(4))
        sum(terms.values()).backward()
        results.append((torch.stack(list(terms.values())), s.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-15)


def test_half_precision_tokens_are_compared_in_float32():
    fs, ft = (x.to(torch.bfloat16) for x in _tokens())
    fs.requires_grad_(True)
    terms = ManifoldLoss(k=6)([fs], [ft], torch.Generator().manual_seed(0))
    assert all(value.dtype == torch.float32 for value in terms.values())
    sum(terms.values()).backward()
    assert fs.grad.dtype == torch.bfloat16 and fs.grad.abs().sum() > 0


def test_teacher_taps_in_inference_mode_are_contiguous_ordinary_copies():
    """CaiT's blocks output tokens transposed in memory; the tap copies them contiguous, outside inference mode
    (the student's graph may save them), and a later in-place op on the output does not reach the copy."""
    from timm.models.cait import Cait

    torch.manual_seed(0)
    model = Cait(img_size=32, patch_size=8, in_chans=1, num_classes=3, embed_dim=16, depth=2, num_heads=2,
                 depth_token_only=1).eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, output: seen.append(output.clone()))
    tap = TokenTap(model, [0, 1], "teacher")
    with torch.inference_mode(), tap.capture() as tokens:
        model(torch.randn(2, 1, 32, 32))
    assert not seen[0].is_contiguous()  # the layout this guards against
    assert all(t.is_contiguous() and not t.is_inference() for t in tokens)
    torch.testing.assert_close(tokens[0].flatten(1, 2), seen[0], rtol=0, atol=0)

    model.blocks[0].register_forward_hook(lambda module, args, output: output.mul_(0))  # after the tap's hook
    with torch.inference_mode(), tap.capture() as later:
        model(torch.randn(2, 1, 32, 32))
    assert later[0].abs().sum() > 0
