"""The Spatial-MSMA conditional flow p(f_p | pos(p), h(x)) and its two mixture base distributions.

Built from normflows layers. Two normflows quirks shape this module (found in normflows 1.7.3):
``GaussianMixture`` takes no ``context`` (so ``ConditionalNormalizingFlow.log_prob`` raises with it) and
builds float64 parameters; :class:`ContextFreeGaussianMixture` fixes both, and :func:`conditional_log_prob`
computes log p(x | c) = log q0(z | c) + log|det dz/dx| from ``inverse_and_log_det`` itself instead of
relying on ``log_prob``.

Direction convention (normflows): a flow's ``forward`` maps base z -> data x (sampling); ``inverse`` maps
x -> z and returns log|det dz/dx| (density). The autoregressive spline wrapper and
:class:`MaskedAffineAutoregressiveDensity` both put the single-pass MADE evaluation on the density side,
which is the only direction training and heatmaps need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import normflows as nf
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.context import GlobalImageEncoder, PositionCode
from spatial_msma.io import InputError
from spatial_msma.training import save_torch


class ContextFreeGaussianMixture(nf.distributions.GaussianMixture):
    """normflows' trainable diagonal ``GaussianMixture`` that accepts (and ignores) ``context``, in float32.

    The mode means are drawn from ``generator`` rather than normflows' unseeded ``np.random`` so the same
    seed builds the same model.
    """

    def __init__(self, n_modes: int, dim: int, generator: torch.Generator):
        loc = torch.randn(n_modes, dim, generator=generator, dtype=torch.float64).numpy()
        super().__init__(n_modes, dim, loc=loc, scale=np.ones((n_modes, dim)), trainable=True)
        self.float()

    def forward(self, num_samples: int = 1, context: torch.Tensor | None = None):
        return super().forward(num_samples)

    def log_prob(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return super().log_prob(z)

    def mode_location(self, context: torch.Tensor | None, n: int) -> torch.Tensor:
        """Mean of the heaviest mode, repeated ``n`` times (the context is ignored)."""
        best = torch.argmax(self.weight_scores[0])
        return self.loc[0, best].repeat(n, 1)


class ConditionalGaussianMixture(nf.distributions.BaseDistribution):
    """The paper's conditional GMM: per-sample mode means, log-scales and weights from an MLP on the context.

    The MLP's last layer starts at zero with a bias holding a fixed mixture (random means, unit scales,
    equal weights), so training starts from a well-defined context-free GMM and learns the dependence.
    Densities and samples come from ``torch.distributions.MixtureSameFamily``.
    """

    def __init__(self, n_modes: int, dim: int, context_dims: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.n_modes, self.dim = n_modes, dim
        self.net = nn.Sequential(
            nn.Linear(context_dims, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, n_modes * (2 * dim + 1)),
        )
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        loc = torch.randn(n_modes * dim, generator=generator)
        with torch.no_grad():
            last.bias.copy_(torch.cat([loc, torch.zeros(n_modes * dim + n_modes)]))

    def parameters_for(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, K, D) means, (N, K, D) log-scales, (N, K) logits."""
        out = self.net(context)
        k, d = self.n_modes, self.dim
        loc = out[:, : k * d].reshape(-1, k, d)
        log_scale = out[:, k * d: 2 * k * d].reshape(-1, k, d)
        return loc, log_scale, out[:, 2 * k * d:]

    def mixture(self, context: torch.Tensor) -> MixtureSameFamily:
        loc, log_scale, logits = self.parameters_for(context)
        components = Independent(Normal(loc, torch.exp(log_scale), validate_args=False), 1)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), components,
                                 validate_args=False)

    def forward(self, num_samples: int = 1, context: torch.Tensor | None = None):
        if context is None or context.shape[0] != num_samples:
            raise ValueError("ConditionalGaussianMixture samples one point per context row")
        dist = self.mixture(context)
        z = dist.sample()
        return z, dist.log_prob(z)

    def log_prob(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            raise ValueError("ConditionalGaussianMixture needs a context")
        return self.mixture(context).log_prob(z)

    def mode_location(self, context: torch.Tensor, n: int) -> torch.Tensor:
        """Per context row, the mean of its heaviest mode."""
        loc, _, logits = self.parameters_for(context)
        best = torch.argmax(logits, dim=1)
        return loc[torch.arange(loc.shape[0]), best]


class MaskedAffineAutoregressiveDensity(nf.flows.Flow):
    """The code's masked affine autoregressive layer with the one-pass MADE on the density side (MAF).

    ``nf.flows.MaskedAffineAutoregressive`` used directly as a normflows flow puts its single-pass
    direction on the sampling side (an IAF), so every density evaluation would cost D sequential passes.
    """

    def __init__(self, features: int, hidden: int, context_features: int | None, blocks: int):
        super().__init__()
        self.maf = nf.flows.MaskedAffineAutoregressive(features, hidden, context_features=context_features,
                                                       num_blocks=blocks)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        x, log_det = self.maf.inverse(z, context=context)
        return x, log_det.view(-1)

    def inverse(self, x: torch.Tensor, context: torch.Tensor | None = None):
        z, log_det = self.maf(x, context=context)
        return z, log_det.view(-1)


def conditional_log_prob(flow: nf.ConditionalNormalizingFlow, x: torch.Tensor,
                         context: torch.Tensor | None) -> torch.Tensor:
    """log p(x | c) = log q0(z | c) + log|det dz/dx| with z, log|det| from ``inverse_and_log_det``."""
    z, log_det = flow.inverse_and_log_det(x, context=context)
    return flow.q0.log_prob(z, context=context) + log_det


@dataclass(frozen=True)
class ModelMeta:
    """What a trained model must know about its inputs to score new images consistently."""

    levels: list[int]  # indices into the cache's noise levels
    sigmas: list[float]  # all sigmas of the training caches
    shape: tuple[int, int, int]
    affine: list[list[float]]
    in_channels: int
    feature_mean: list[float]
    feature_std: list[float]

    def check_compatible(self, sigmas: np.ndarray, shape: tuple[int, ...], affine: np.ndarray, what: str) -> None:
        """Raise InputError unless an input has the training grid, affine and noise levels."""
        if tuple(shape) != tuple(self.shape):
            raise InputError(f"{what}: grid {tuple(shape)} != the model's training grid {tuple(self.shape)}")
        if not np.allclose(affine, np.asarray(self.affine), atol=1e-3):
            raise InputError(f"{what}: affine differs from the model's training affine")
        if len(sigmas) != len(self.sigmas) or not np.allclose(sigmas, self.sigmas, rtol=1e-5):
            raise InputError(f"{what}: noise levels {np.round(sigmas, 5).tolist()} != the model's "
                             f"{np.round(self.sigmas, 5).tolist()}")


class SpatialFlow(nn.Module):
    """Context encoders + normflows ``ConditionalNormalizingFlow`` over standardised log patch norms.

    Layer order from the base: n_layers x (LU-linear permutation, RQ-spline), then (``maf_layer``) one
    masked affine autoregressive layer, which is therefore the first to see the data, as in the code.
    Inputs x are the log features standardised with the training mean/SD per level (``meta``); densities
    are in nats of those units. With ``input_norm: voxel`` the flow sees u = (x - m_p) / s_p, with m_p, s_p
    the training mean/SD at voxel p (``voxel_stats``, pooled like the voxel Gaussian), and the density of
    x includes the Jacobian -sum log s_p, so NLLs stay comparable across models.
    """

    def __init__(self, cfg: FlowConfig, meta: ModelMeta, seed: int = 0,
                 voxel_stats: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        dim = len(meta.levels)
        if cfg.flow_type == "coupling" and dim < 2 and cfg.n_layers > 0:
            raise InputError(f"flow.flow_type: coupling layers need >= 2 noise levels, the model has {dim}")
        ctx = cfg.context_dims or None
        if cfg.input_norm == "voxel":
            mean, std = voxel_stats if voxel_stats is not None else (np.zeros((*meta.shape, dim)),
                                                                     np.ones((*meta.shape, dim)))
            self.register_buffer("voxel_mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("voxel_std", torch.as_tensor(std, dtype=torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            self.position = PositionCode(meta.shape, cfg.position_dims, cfg.min_wavelength) \
                if cfg.use_position else None
            gf = cfg.global_features
            self.encoder = GlobalImageEncoder(meta.in_channels, gf.channels, gf.dims, gf.kernel, gf.stride,
                                              gf.heads) if cfg.use_global else None
            flows: list[nf.flows.Flow] = []
            for i in range(cfg.n_layers):
                flows.append(nf.flows.LULinearPermute(dim))
                if cfg.flow_type == "autoregressive":
                    flows.append(nf.flows.AutoregressiveRationalQuadraticSpline(
                        dim, cfg.blocks, cfg.hidden, num_context_channels=ctx, num_bins=cfg.bins,
                        tail_bound=cfg.tail_bound))
                else:
                    flows.append(nf.flows.CoupledRationalQuadraticSpline(
                        dim, cfg.blocks, cfg.hidden, num_context_channels=ctx, num_bins=cfg.bins,
                        tail_bound=cfg.tail_bound, reverse_mask=bool(i % 2)))
            if cfg.maf_layer:
                flows.append(MaskedAffineAutoregressiveDensity(dim, cfg.hidden, ctx, cfg.blocks))
            if cfg.base == "gmm":
                q0: nf.distributions.BaseDistribution = ContextFreeGaussianMixture(cfg.n_modes, dim, generator)
            else:
                q0 = ConditionalGaussianMixture(cfg.n_modes, dim, cfg.context_dims, cfg.base_hidden, generator)
            self.flow = nf.ConditionalNormalizingFlow(q0, flows)

    def image_features(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, C, X, Y, Z) -> (B, G) global features, or None when the model uses none."""
        return self.encoder(images) if self.encoder is not None else None

    def context(self, index: torch.Tensor, global_features: torch.Tensor | None) -> torch.Tensor | None:
        """Per-voxel context: position code of (N, 3) indices ++ the (N, G) global features of its image."""
        parts = []
        if self.position is not None:
            parts.append(self.position(index))
        if global_features is not None:
            parts.append(global_features)
        return torch.cat(parts, dim=1) if parts else None

    def _voxel_stats(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.cfg.input_norm != "voxel":
            return None
        i, j, k = index.unbind(1)
        return self.voxel_mean[i, j, k], self.voxel_std[i, j, k]

    def log_prob(self, x: torch.Tensor, index: torch.Tensor, context: torch.Tensor | None,
                 jacobian: bool = True) -> torch.Tensor:
        """log-density of standardised features x (N, L) at voxels ``index`` (N, 3) given the context (N, C).

        ``jacobian=False`` leaves out the per-voxel log-Jacobian -sum log s_p of ``input_norm: voxel``: the
        log-density of the per-voxel standardised features (what the heatmap scores by default).
        """
        stats = self._voxel_stats(index)
        if stats is None:
            return conditional_log_prob(self.flow, x, context)
        mean, std = stats
        log_density = conditional_log_prob(self.flow, (x - mean) / std, context)
        return log_density - torch.log(std).sum(1) if jacobian else log_density

    @torch.no_grad()
    def flow_space_mode(self, context: torch.Tensor | None, n: int) -> torch.Tensor:
        """The heaviest base mode pushed through the flow, in the flow's input units (sampling direction:
        D MADE passes per autoregressive layer, so about D times the cost of a density evaluation)."""
        return self.flow.forward(self.flow.q0.mode_location(context, n), context=context)

    def from_flow_space(self, u: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Flow input units -> standardised features (undoes ``input_norm: voxel``)."""
        stats = self._voxel_stats(index)
        return u if stats is None else u * stats[1] + stats[0]

    def conditional_mode(self, index: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """A typical x per voxel: the heaviest base mode pushed through the flow (standardised units).

        Not the exact mode of p(x | c) (the Jacobian shifts it) but the image of the base's densest point,
        which is what the one-sided score compares against.
        """
        return self.from_flow_space(self.flow_space_mode(context, index.shape[0]), index)

    def score(self, x: torch.Tensor, index: torch.Tensor, context: torch.Tensor | None,
              typical: torch.Tensor | None = None, jacobian: bool = True) -> torch.Tensor:
        """Negative log-likelihood per voxel. One-sided when ``typical`` (N, L) is given: x is scored at
        max(x, typical) level-wise, so norms LOWER than typical stop counting as anomalous. ``jacobian``:
        see :meth:`log_prob`."""
        if typical is not None:
            x = torch.maximum(x, typical)
        return -self.log_prob(x, index, context, jacobian)


def save_flow(model: SpatialFlow, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write the model (config, input metadata, weights) atomically; loadable with ``weights_only``."""
    payload = {"kind": "flow", "config": model.cfg.to_dict(), "meta": meta_to_dict(model.meta),
               "state_dict": model.state_dict(), "extra": extra or {}}
    save_torch(payload, path)


def meta_to_dict(meta: ModelMeta) -> dict[str, Any]:
    return {"levels": list(meta.levels), "sigmas": list(meta.sigmas), "shape": list(meta.shape),
            "affine": [list(r) for r in meta.affine], "in_channels": meta.in_channels,
            "feature_mean": list(meta.feature_mean), "feature_std": list(meta.feature_std)}


def meta_from_dict(raw: dict[str, Any]) -> ModelMeta:
    return ModelMeta(levels=[int(v) for v in raw["levels"]], sigmas=[float(v) for v in raw["sigmas"]],
                     shape=tuple(int(v) for v in raw["shape"]), affine=[list(map(float, r)) for r in raw["affine"]],
                     in_channels=int(raw["in_channels"]), feature_mean=[float(v) for v in raw["feature_mean"]],
                     feature_std=[float(v) for v in raw["feature_std"]])


def load_payload(path: str | os.PathLike) -> dict[str, Any]:
    """Read a model file written by :func:`save_flow` or the Gaussian ablation; InputError if it is not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"model {path}: unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("kind") not in ("flow", "voxel_gaussian"):
        raise InputError(f"model {path}: not a Spatial-MSMA flow or voxel-Gaussian model")
    return payload


def flow_from_payload(payload: dict[str, Any]) -> SpatialFlow:
    """Rebuild a :class:`SpatialFlow` from a saved payload and load its weights."""
    model = SpatialFlow(FlowConfig.from_dict(payload["config"]), meta_from_dict(payload["meta"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()
