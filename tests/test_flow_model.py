"""The flow's densities against known answers: Gaussian log-pdfs, an affine layer, numeric normalisation."""

from __future__ import annotations

import math

import normflows as nf
import numpy as np
import pytest
import torch
from scipy import stats

from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.context import GlobalImageEncoder, PositionCode
from spatial_msma.flow.model import (
    ConditionalGaussianMixture,
    ContextFreeGaussianMixture,
    MaskedAffineAutoregressiveDensity,
    ModelMeta,
    SpatialFlow,
    conditional_log_prob,
    flow_from_payload,
    load_payload,
    save_flow,
)
from spatial_msma.io import InputError
from spatial_msma.methods import flow_section

torch.set_num_threads(1)

SMALL_GLOBAL = {"channels": [2, 4], "dims": 4, "kernel": 3, "stride": 2, "heads": 2}


def make_meta(dim: int, shape=(8, 8, 8)) -> ModelMeta:
    return ModelMeta(levels=list(range(dim)), sigmas=[0.1 * (i + 1) for i in range(dim)], shape=shape,
                     affine=np.eye(4).tolist(), in_channels=2, feature_mean=[0.0] * dim, feature_std=[1.0] * dim)


def standard_gmm(dim: int) -> ContextFreeGaussianMixture:
    q0 = ContextFreeGaussianMixture(1, dim, torch.Generator().manual_seed(0))
    with torch.no_grad():
        q0.loc.zero_()
        q0.log_scale.zero_()
    return q0


def test_identity_flow_gives_the_gaussian_log_pdf():
    """No layers + one mode N(0.5, 2^2): log p must be that Gaussian's log-pdf, to float precision."""
    cfg = FlowConfig(n_layers=0, maf_layer=False, base="gmm", n_modes=1, use_global=False, position_dims=6,
                     input_norm="global")
    model = SpatialFlow(cfg, make_meta(3), seed=0)
    with torch.no_grad():
        model.flow.q0.loc.fill_(0.5)
        model.flow.q0.log_scale.fill_(math.log(2.0))
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    index = torch.randint(0, 8, (50, 3))
    context = model.context(index, None)
    expected = stats.multivariate_normal(mean=[0.5] * 3, cov=4.0 * np.eye(3)).logpdf(x.numpy())
    np.testing.assert_allclose(model.log_prob(x, index, context).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_voxel_input_norm_keeps_the_jacobian():
    """Identity flow, standard base, per-voxel stats (m_p, s_p): log p(x) = sum_l log N(x_l; m_pl, s_pl^2)."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(8, 8, 8, 2)).astype(np.float32)
    std = rng.uniform(0.2, 3.0, size=(8, 8, 8, 2)).astype(np.float32)
    cfg = FlowConfig(n_layers=0, maf_layer=False, base="gmm", n_modes=1, use_global=False, position_dims=6)
    model = SpatialFlow(cfg, make_meta(2), seed=0, voxel_stats=(mean, std))
    model.flow.q0 = standard_gmm(2)
    index = torch.from_numpy(rng.integers(0, 8, size=(30, 3)))
    x = torch.from_numpy(rng.normal(size=(30, 2)).astype(np.float32) * 2)
    i, j, k = index.numpy().T
    expected = stats.norm(mean[i, j, k], std[i, j, k]).logpdf(x.numpy()).sum(1)
    got = model.log_prob(x, index, model.context(index, None)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the conditional mode is the voxel mean, in the input units
    np.testing.assert_allclose(model.conditional_mode(index, None).numpy(), mean[i, j, k], atol=1e-6)


def test_untrained_autoregressive_flow_is_a_permutation():
    """Identity-initialised LU-linear + autoregressive RQ-spline layers: z is x permuted, log|det| = 0."""
    cfg = FlowConfig(flow_type="autoregressive", n_layers=2, maf_layer=False, base="conditional_gmm", n_modes=3,
                     position_dims=6, global_features=SMALL_GLOBAL, hidden=16)
    model = SpatialFlow(cfg, make_meta(4), seed=0)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    g = model.image_features(torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(3)))
    index = torch.randint(0, 8, (20, 3))
    context = model.context(index, g[torch.arange(20) % 2])
    z, log_det = model.flow.inverse_and_log_det(x, context=context)
    np.testing.assert_allclose(torch.sort(z, 1).values.detach().numpy(), torch.sort(x, 1).values.numpy(), atol=1e-4)
    np.testing.assert_allclose(log_det.detach().numpy(), 0.0, atol=1e-4)
    expected = model.flow.q0.log_prob(z, context)
    np.testing.assert_allclose(model.log_prob(x, index, context).detach().numpy(), expected.detach().numpy(),
                               atol=1e-4)


class ContextAffine(nf.flows.AffineConstFlow):
    """normflows' constant affine layer, accepting the ``context`` keyword the conditional flow passes."""

    def forward(self, z, context=None):
        return super().forward(z)

    def inverse(self, z, context=None):
        return super().inverse(z)


def test_known_affine_layer_density():
    """x = exp(s) z + t with z ~ N(0, I): log p(x) must be the N(t, exp(2s)) log-pdf."""
    scale = torch.tensor([0.3, -0.7])
    shift = torch.tensor([1.0, -2.0])
    layer = ContextAffine((2,))
    with torch.no_grad():
        layer.s.copy_(scale[None])
        layer.t.copy_(shift[None])
    flow = nf.ConditionalNormalizingFlow(standard_gmm(2), [layer])
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(4)) * 3
    expected = (stats.norm(shift[0], math.exp(scale[0])).logpdf(x[:, 0].numpy())
                + stats.norm(shift[1], math.exp(scale[1])).logpdf(x[:, 1].numpy()))
    np.testing.assert_allclose(conditional_log_prob(flow, x, None).detach().numpy(), expected, rtol=1e-5)


def test_maf_wrapper_is_invertible_and_its_log_det_matches_the_jacobian():
    torch.manual_seed(0)
    layer = MaskedAffineAutoregressiveDensity(3, 8, context_features=2, blocks=1)
    with torch.no_grad():  # make the MADE output non-trivial
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 3)
    context = torch.randn(5, 2)
    z, log_det = layer.inverse(x, context)
    x_back, log_det_fwd = layer.forward(z, context)
    np.testing.assert_allclose(x_back.detach().numpy(), x.numpy(), atol=1e-5)
    np.testing.assert_allclose(log_det_fwd.detach().numpy(), -log_det.detach().numpy(), atol=1e-5)
    for n in range(5):
        jac = torch.autograd.functional.jacobian(lambda v, n=n: layer.inverse(v[None], context[n:n + 1])[0][0], x[n])
        assert float(torch.linalg.slogdet(jac)[1]) == pytest.approx(log_det[n].item(), abs=1e-5)


def test_context_free_mixture_is_float32_accepts_context_and_samples():
    q0 = ContextFreeGaussianMixture(4, 3, torch.Generator().manual_seed(0))
    assert all(p.dtype == torch.float32 for p in q0.parameters())
    z, log_q = q0(7, context=torch.zeros(7, 5))
    assert z.shape == (7, 3) and z.dtype == torch.float32
    np.testing.assert_allclose(log_q.detach().numpy(), q0.log_prob(z, context=None).detach().numpy(), rtol=1e-6)
    again = ContextFreeGaussianMixture(4, 3, torch.Generator().manual_seed(0))
    assert torch.equal(q0.loc, again.loc)  # seeded, not numpy's global RNG


def test_conditional_mixture_matches_a_hand_computed_mixture():
    torch.manual_seed(0)
    q0 = ConditionalGaussianMixture(n_modes=3, dim=2, context_dims=4, hidden=8, generator=torch.Generator())
    with torch.no_grad():
        for p in q0.parameters():
            p.add_(0.2 * torch.randn_like(p))
    context = torch.randn(6, 4)
    z = torch.randn(6, 2)
    loc, log_scale, logits = (t.detach().numpy().astype(np.float64) for t in q0.parameters_for(context))
    weights = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = [np.log(sum(weights[n, k] * stats.multivariate_normal(loc[n, k], np.diag(np.exp(2 * log_scale[n, k])))
                           .pdf(z[n].numpy()) for k in range(3))) for n in range(6)]
    np.testing.assert_allclose(q0.log_prob(z, context).detach().numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="context"):
        q0.log_prob(z, None)


def _fit(model: SpatialFlow, sample, steps: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, index = sample()
        loss = -model.log_prob(x, index, model.context(index, None)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_trained_conditional_flows_integrate_to_one():
    """Train small flows on position-dependent data, then integrate exp(log p(x | c)) over a grid at fixed
    contexts: 1-D (autoregressive, conditional GMM) and 2-D (coupling, context-free GMM)."""
    gen = torch.Generator().manual_seed(5)

    def sampler(dim):
        def sample():
            index = torch.randint(0, 8, (512, 3), generator=gen)
            mean = (index[:, :1].float() - 4) / 2
            x = mean + torch.randn(512, dim, generator=gen) * 0.5
            x[:, -1] = x[:, -1] + 0.5 * torch.sin(3 * x[:, 0])  # non-Gaussian joint when dim = 2
            return x, index
        return sample

    cfg1 = FlowConfig(flow_type="autoregressive", n_layers=2, maf_layer=True, hidden=16, bins=6, n_modes=2,
                      use_global=False, position_dims=6)
    cfg2 = FlowConfig(flow_type="coupling", n_layers=2, maf_layer=True, hidden=16, bins=6, base="gmm",
                      n_modes=2, use_global=False, position_dims=6)
    for cfg, dim in ((cfg1, 1), (cfg2, 2)):
        torch.manual_seed(0)
        model = SpatialFlow(cfg, make_meta(dim), seed=0)
        _fit(model, sampler(dim), 150)
        model.eval()
        for voxel in ([1, 3, 3], [6, 2, 5]):
            if dim == 1:
                grid = torch.linspace(-12, 12, 4001)[:, None]
                cell = 24 / 4000
            else:
                axis = torch.linspace(-12, 12, 301)
                grid = torch.cartesian_prod(axis, axis)
                cell = (24 / 300) ** 2
            with torch.no_grad():
                index = torch.tensor([voxel]).expand(len(grid), 3)
                density = torch.exp(model.log_prob(grid, index, model.context(index, None)).double())
            assert float(density.sum() * cell) == pytest.approx(1.0, abs=0.02), (cfg.flow_type, voxel)


def test_save_load_round_trip_gives_identical_densities(tmp_path):
    cfg = FlowConfig(n_layers=1, hidden=8, position_dims=6, global_features=SMALL_GLOBAL)
    model = SpatialFlow(cfg, make_meta(3), seed=3)
    save_flow(model, tmp_path / "model.pt", extra={"val_nll": 1.5})
    loaded = flow_from_payload(load_payload(tmp_path / "model.pt"))
    x = torch.randn(10, 3)
    images = torch.randn(1, 2, 8, 8, 8)
    index = torch.randint(0, 8, (10, 3))
    ctx_a = model.context(index, model.image_features(images).expand(10, -1))
    ctx_b = loaded.context(index, loaded.image_features(images).expand(10, -1))
    assert torch.equal(model.log_prob(x, index, ctx_a), loaded.log_prob(x, index, ctx_b))
    with pytest.raises(InputError, match="not a Spatial-MSMA"):
        torch.save({"kind": "other"}, tmp_path / "bad.pt")
        load_payload(tmp_path / "bad.pt")


def test_one_sided_score_ignores_low_norms():
    """Identity flow, standard base at 0: x below the mode scores like the mode itself; x above does not."""
    cfg = FlowConfig(n_layers=0, maf_layer=False, base="gmm", n_modes=1, use_global=False, position_dims=6)
    model = SpatialFlow(cfg, make_meta(2), seed=0)
    with torch.no_grad():
        model.flow.q0.loc.zero_()
        model.flow.q0.log_scale.zero_()
    x = torch.tensor([[-3.0, -3.0], [0.0, 0.0], [3.0, 3.0], [3.0, -3.0]])
    index = torch.zeros(4, 3, dtype=torch.long)
    context = model.context(index, None)
    two = model.score(x, index, context).detach().numpy()
    one = model.score(x, index, context, typical=model.conditional_mode(index, context)).detach().numpy()
    np.testing.assert_allclose(two[0], two[2])
    np.testing.assert_allclose(one[0], one[1])
    np.testing.assert_allclose(one[2], two[2])
    np.testing.assert_allclose(one[3], math.log(2 * math.pi) + 4.5, rtol=1e-6)


def test_position_code_and_encoder_shapes():
    code = PositionCode((8, 10, 6), dims=12, min_wavelength=4.0)
    index = torch.tensor([[0, 0, 0], [2, 5, 1], [7, 9, 5]])
    out = code(index)
    assert out.shape == (3, 12)
    # per axis [sin f1, sin f2, cos f1, cos f2]: sin 0 = 0, cos 0 = 1 at the origin
    np.testing.assert_allclose(out[0].numpy(), [0.0, 0.0, 1.0, 1.0] * 3, atol=1e-7)
    # x axis, fastest frequency = 4-voxel wavelength: sin(2 pi * 2 / 4) = 0, cos = -1
    assert float(out[1, 0]) == pytest.approx(0.0, abs=1e-6) and float(out[1, 2]) == pytest.approx(-1.0)
    all_codes = code(torch.cartesian_prod(torch.arange(8), torch.arange(10), torch.arange(6)))
    assert torch.unique(all_codes.round(decimals=5), dim=0).shape[0] == 8 * 10 * 6
    enc = GlobalImageEncoder(2, (2, 4), 5, kernel=17, stride=8, heads=2)
    assert enc(torch.randn(3, 2, 48, 56, 40)).shape == (3, 5)


def test_config_validation_names_the_key():
    with pytest.raises(InputError, match="flow: unknown key"):
        FlowConfig.from_dict({"n_layer": 3})
    with pytest.raises(InputError, match="flow.global_features: unknown"):
        FlowConfig.from_dict({"global_features": {"dim": 3}})
    with pytest.raises(InputError, match="flow.position_dims"):
        FlowConfig.from_dict({"position_dims": 10})
    with pytest.raises(InputError, match="flow.base"):
        FlowConfig.from_dict({"base": "vae"})
    with pytest.raises(InputError, match="flow.lr: expected float"):
        FlowConfig.from_dict({"lr": "fast"})
    with pytest.raises(InputError, match="flow.use_position: expected bool"):
        FlowConfig.from_dict({"use_position": "no"})
    with pytest.raises(InputError, match="conditional_gmm needs a context"):
        FlowConfig.from_dict({"use_position": False, "use_global": False})
    nopos = FlowConfig.from_dict(flow_section({"lr": 1e-4}, "spatial_msma_nopos"))
    assert nopos.use_position is False and nopos.lr == 1e-4
    assert FlowConfig.from_dict(flow_section(None, "voxel_gaussian")).model == "voxel_gaussian"
    assert FlowConfig.from_dict(flow_section({}, "spatial_msma_gmm")).base == "gmm"
    with pytest.raises(ValueError, match="not one of"):
        flow_section({}, "spatial_msma_nothing")
    cfg = FlowConfig.from_dict({"global_features": {"channels": [4, 8], "heads": 2}})
    assert FlowConfig.from_dict(cfg.to_dict()) == cfg
