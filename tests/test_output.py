"""The dual-module output projection (dualtvm.output): mask semantics, fit, calibration, artefact, compiled build."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dualtvm.artefact import ArtefactError, load_output_little, save_output_little
from dualtvm.output import DualOutput, OutputConfig, band_mask, calibrate_output, fit_output_little, linear_hash
from dualtvm.output import GATE


def _logit_inputs(rows: int, cols: int, n: int, seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    """A projection whose inputs are low-rank plus noise, like a decoder's hidden states (not isotropic)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(cols, rows)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(rows, cols, generator=g) / cols**0.5)
        lin.bias.copy_(0.1 * torch.randn(rows, generator=g))
    basis = torch.randn(12, cols, generator=g)
    x = torch.randn(n, 12, generator=g) @ basis * 0.8 + 0.05 * torch.randn(n, cols, generator=g)
    return lin, x


@pytest.fixture(scope="module")
def fitted():
    lin, x = _logit_inputs(300, 100, 3000)
    little = fit_output_little(lin, [x[:1000], x[1000:2000]], OutputConfig(k=24))
    calibrate_output(little, [x[2000:2500]])
    return lin, little, x[2500:]


def test_band_mask_marks_the_logits_within_theta_of_the_little_maximum():
    y = torch.tensor([[1.0, 3.0, 2.5, -1.0], [0.0, 0.0, -5.0, 0.2]])
    assert band_mask(y, 0.6).tolist() == [[False, True, True, False], [True, True, False, True]]
    assert band_mask(y, float("inf")).all()
    assert band_mask(y, 0.0).sum(-1).tolist() == [1, 1]  # the maximum is always sensitive


def test_ratio_zero_is_the_big_projection_and_calibration_hits_the_ratio(fitted):
    lin, little, held_out = fitted
    dual = DualOutput(lin, little)
    dual.set_insensitive_ratio(0.0)
    assert torch.equal(dual(held_out), lin(held_out))
    for ratio in (0.5, 0.9):
        dual.set_insensitive_ratio(ratio)
        dual.stats.__init__()
        out = dual(held_out)
        assert abs(dual.stats.ratio(GATE) - ratio) < 0.03  # held-out data, ±3 points
        mask = band_mask(little.logits(held_out), little.theta(ratio))
        assert torch.equal(out[mask], lin(held_out)[mask])  # eq. 1: the big value where sensitive
        assert torch.equal(out[~mask], little.logits(held_out)[~mask])
    # the little module ranks well enough that the argmax survives 90 % insensitive on held-out inputs
    assert (dual(held_out).argmax(-1) == lin(held_out).argmax(-1)).float().mean() > 0.97


def test_fit_recovers_an_exactly_representable_projection():
    """With P of full column rank (k = 64 rows for each 16-column half) the projection loses nothing: the INT8
    little logits match the big ones up to quantisation."""
    lin, x = _logit_inputs(64, 32, 2000, seed=1)
    little = fit_output_little(lin, [x], OutputConfig(k=64, bits=8))
    assert all(np.linalg.matrix_rank(p.dense()) == 16 for p in (little.proj_lo, little.proj_hi))
    err = (little.logits(x) - lin(x)).abs().max().item()
    assert err < 0.05 * lin(x).abs().max().item()


def test_learned_projection_ranks_a_low_rank_projection_at_small_k(tmp_path):
    """Logits of rank 4 on isotropic inputs: the learned projection's 4 dims per half span what they depend on
    (only quantisation is lost), eq. 2's 4 random dims do not; the artefact keeps the kind."""
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(100, 300)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(300, 4, generator=g) @ torch.randn(4, 100, generator=g) / 10)
    x, held_out = torch.randn(3000, 100, generator=g), torch.randn(500, 100, generator=g)
    with torch.no_grad():
        y = lin(held_out)
        err = {kind: ((fit_output_little(lin, [x], OutputConfig(k=4, projection=kind)).logits(held_out) - y) ** 2).mean()
               for kind in ("sparse", "learned")}
    assert err["learned"] < 1e-3 * (y**2).mean() and err["sparse"] > 0.5 * (y**2).mean()
    little = fit_output_little(lin, [x], OutputConfig(k=4, projection="learned"))
    back = load_output_little(save_output_little(tmp_path / "out.npz", little), linear_hash(lin))
    assert (back.proj_lo.kind, back.proj_hi.kind) == ("learned", "learned")
    assert torch.equal(back.logits(held_out), little.logits(held_out))
    assert OutputConfig(k=4, projection="learned").variant == "-k4-learned" and OutputConfig().variant == ""


def test_artefact_round_trip_and_wrong_weights_are_refused(fitted, tmp_path):
    lin, little, held_out = fitted
    path = save_output_little(tmp_path / "out.npz", little)
    back = load_output_little(path, linear_hash(lin))
    assert torch.equal(back.logits(held_out), little.logits(held_out))
    assert back.theta(0.9) == little.theta(0.9) and back.content_hash() == little.content_hash()
    other = nn.Linear(100, 300)
    with pytest.raises(ArtefactError, match="refit"):
        load_output_little(path, linear_hash(other))
    with pytest.raises(ValueError, match="hash mismatch"):
        DualOutput(other, little)


def test_uncalibrated_module_and_bad_ratio_are_clear_errors(fitted):
    lin, little, _ = fitted
    with pytest.raises(ValueError, match="insensitive ratio"):
        little.theta(1.5)
    raw = fit_output_little(lin, [fitted[2]], OutputConfig(k=8))
    with pytest.raises(RuntimeError, match="calibrate_output"):
        raw.theta(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("bits,projection,target", [
    (8, "sparse", "llvm -mcpu=broadwell"), (4, "sparse", "llvm -mcpu=broadwell"),
    (8, "sparse", "llvm -mtriple=x86_64-linux-gnu"), (8, "learned", "llvm -mcpu=broadwell")],
    ids=["int8-codes", "int4", "int8-floats", "learned"])
def test_compiled_dual_output_projection_equals_the_reference(fitted, tmp_path, bits, projection, target):
    """The compiled build (layers' little kernels on the split input, band mask, masked GEMV, eq. 1) gives the
    PyTorch reference's logits and sensitive-row counts, on a width whose halves the kernels pad (50 → 64), on
    each little GEMV path (INT8 on codes with AVX2, INT4, INT8 on floats without AVX2) and with a learned
    projection (int8 codes beyond eq. 2's ternary ones, same kernels)."""
    from dualtvm.linear import built_for
    from dualtvm.nmt_backends import CompiledProjection, compiled_projection

    lin, little, held_out = fitted
    if (bits, projection) != (8, "sparse"):
        little = fit_output_little(lin, [held_out], OutputConfig(k=24, bits=bits, projection=projection))
        little.gap_quantiles = fitted[1].gap_quantiles
    proj = compiled_projection(lin, target, tmp_path / "out", little)
    assert proj.linear.shape.codes == (target.endswith("broadwell"))
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    assert built_for(tmp_path / "out", w, b, little) and not built_for(tmp_path / "out", w, b)
    assert isinstance(proj, CompiledProjection) and proj.linear.dual
    ref = DualOutput(lin, little)
    x = held_out[:40]
    for ratio in (0.0, 0.5, 0.95):
        proj.set_insensitive_ratio(ratio)
        ref.set_insensitive_ratio(ratio)
        ref.stats.__init__()
        proj.stats = type(ref.stats)()
        with torch.no_grad():
            got, want = proj(x), ref(x)
            y = little.logits(x)
        # a logit within rounding of the band's edge may fall on the other side in the kernels: skip those inputs
        edge = ((y - (y.amax(-1, keepdim=True) - little.theta(ratio))).abs() < 1e-4).any(-1)
        assert edge.sum() <= 2
        np.testing.assert_allclose(got[~edge].numpy(), want[~edge].numpy(), atol=2e-4)
        assert abs(proj.stats.insensitive[GATE] - ref.stats.insensitive[GATE]) <= int(edge.sum())
