"""The GradCAM-MSMA baseline: image-level MSMA localised by Guided Grad-CAM.

Image-level MSMA scores a whole image by the negative log-likelihood (NLL) of its log whole-image score
norms (``n_levels`` noise levels) under a Gaussian mixture fitted on the healthy TRAINING images
(:mod:`spatial_msma.score.msma`: same level choice, features and fitting; here fitted on the train
score-norm cache). To localise, the NLL is written as a differentiable torch function of the image --
the sigma-scaled scores at the GMM's levels recomputed through the score network, their L2 norms over the
whole image, the log, and the GMM log-density from the fitted sklearn parameters (:class:`TorchGmm`,
equal to ``GaussianMixture.score_samples``) -- and explained by Guided Grad-CAM (captum ``LayerGradCam``
times ``GuidedBackprop``):

- Grad-CAM at a late score-network layer (``layer``, default ``auto``: the last decoder block --
  ``unet.up_blocks.2`` for the 3-level default network -- at full resolution, right before the output
  head; the deepest layer that still has channels to weight and the image's resolution). The network
  sees the image once per level (the levels are one batch), so the layer's activation is L copies of C
  feature maps; they are treated as one layer of L x C channels: captum's per-copy channel-weighted sums
  (``relu_attributions=False``) are added over the levels and only then rectified -- the Grad-CAM of
  that concatenated layer. Upsampled (trilinear) to the image grid (an identity at the default layer).
  Grad-CAM keeps only what RAISES the NLL: a typical image can get an all-zero map.
- Guided backpropagation of the NLL to the input. captum's ``GuidedBackprop`` only overrides ``nn.ReLU``
  modules, and MONAI's ``DiffusionModelUNet`` has none: every nonlinearity is an ``nn.SiLU`` module
  (none functional). Plain captum would therefore return the ordinary gradient. :class:`GuidedSiluBackprop`
  applies captum's guided rule to the SiLU modules as well: the gradient leaving the activation towards
  its input -- the ordinary one, ``g * silu'(z)`` -- is clamped at zero, exactly what captum does to a
  ReLU's ``g * 1[z > 0]``. The forward pass is untouched (swapping SiLU for ReLU would explain a
  different network); ``guided_silu: false`` gives the unguided gradient for comparison.
- Heatmap = sum over channels of |Grad-CAM x guided gradient|, 0 outside the brain mask.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam
from sklearn.mixture import GaussianMixture
from torch import nn

from spatial_msma import io
from spatial_msma.io import InputError, config_section
from spatial_msma.score.msma import (
    COVARIANCE_TYPES,
    NORM_FLOOR,
    MsmaImageConfig,
    fit_image_gmm,
    image_features,
    read_image_norms,
    select_levels,
)
from spatial_msma.score.network import ScoreNet, load_score_model
from spatial_msma.training import resolve_device

if TYPE_CHECKING:
    from spatial_msma.detector import Case

#: Tag of a GMM file written by :func:`fit_gradcam_gmm`.
GMM_FORMAT = "spatial_msma.gradcam_gmm.v1"


@dataclass(frozen=True)
class GradcamConfig:
    """The ``gradcam_msma`` config section.

    ``n_levels`` .. ``reg_covar`` define the image-level GMM as in ``msma_image`` (null ``n_levels`` = every
    cached level). ``layer`` names a module of the score network (``ScoreNet``'s ``named_modules``), or
    ``auto`` for its last decoder block.

    Cost: per image, one forward pass of the score network on a batch of ``n_levels`` copies with the
    backward cut at ``layer`` (Grad-CAM), then one forward and one full backward (guided gradients), so
    about 4 forward passes per level: the cost grows linearly with ``n_levels``. On the 2-core CPU, all 10
    levels would take several minutes for the ~20 images of val, test, val_lesioned and test_lesioned; 3 levels (the
    lowest, a middle and the highest cached level) fit the under-a-minute budget of the default (timings in
    benchmarks/README.md). The trade-off: fewer levels explain a coarser density model (the GMM on 3 log
    image norms instead of the authors' 10); ``n_levels: 10`` (or null for every cached level) restores it
    wherever minutes per image are affordable (a GPU, the paper config).

    Image-level MSMA, the density this baseline explains, is near chance for 20 mL of lesion in a whole
    brain (benchmarks/README.md): expect a weak row; that is the paper's point about this baseline.
    """

    n_levels: int | None = 3
    n_components: int = 1
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    layer: str = "auto"
    guided_silu: bool = True
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> GradcamConfig:
        out = cls(**config_section(cls, cfg, "gradcam_msma"))  # type: ignore[arg-type]
        out.gmm_config().check("gradcam_msma")
        if not isinstance(out.layer, str) or not out.layer:
            raise InputError(f"config gradcam_msma.layer: expected a module name, got {out.layer!r}")
        if not isinstance(out.guided_silu, bool):
            raise InputError(f"config gradcam_msma.guided_silu: expected true or false, got {out.guided_silu!r}")
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def gmm_config(self) -> MsmaImageConfig:
        return MsmaImageConfig(n_levels=self.n_levels, n_components=self.n_components,
                               covariance_type=self.covariance_type, reg_covar=self.reg_covar)


# ---------------------------------------------------------------------------------------------------------
# The GMM as a torch function


def full_precision_cholesky(gmm: GaussianMixture) -> np.ndarray:
    """sklearn's ``precisions_cholesky_`` of any covariance type as (K, d, d) matrices P with
    log N(x; mu_k, Sigma_k) = -d/2 log 2 pi + log det P_k - |x P_k - mu_k P_k|^2 / 2."""
    k, d = gmm.means_.shape
    pc = np.asarray(gmm.precisions_cholesky_, np.float64)
    if gmm.covariance_type == "full":
        return pc
    if gmm.covariance_type == "tied":
        return np.broadcast_to(pc, (k, d, d)).copy()
    if gmm.covariance_type == "diag":
        return np.stack([np.diag(row) for row in pc])
    if gmm.covariance_type == "spherical":
        return np.stack([np.eye(d) * value for value in pc])
    raise InputError(f"GMM covariance_type {gmm.covariance_type!r}: expected one of {COVARIANCE_TYPES}")


class TorchGmm(nn.Module):
    """The log-density of a fitted Gaussian mixture in torch (float64), differentiable in its input."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, precision_cholesky: np.ndarray):
        super().__init__()
        k, d = np.shape(means)
        if np.shape(weights) != (k,) or np.shape(precision_cholesky) != (k, d, d):
            raise InputError(f"GMM parameters: weights {np.shape(weights)}, means {np.shape(means)} and "
                             f"precision Cholesky factors {np.shape(precision_cholesky)} do not fit together")
        self.register_buffer("log_weights", torch.log(torch.as_tensor(weights, dtype=torch.float64)))
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.register_buffer("prec_chol", torch.as_tensor(precision_cholesky, dtype=torch.float64))

    @classmethod
    def from_sklearn(cls, gmm: GaussianMixture) -> TorchGmm:
        return cls(gmm.weights_, gmm.means_, full_precision_cholesky(gmm))

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) features -> (B,) log-density (what sklearn's ``score_samples`` returns)."""
        f = features.to(torch.float64)
        y = torch.einsum("bd,kde->bke", f, self.prec_chol) - torch.einsum("kd,kde->ke", self.means, self.prec_chol)
        log_det = torch.log(torch.diagonal(self.prec_chol, dim1=-2, dim2=-1)).sum(-1)
        log_gauss = -0.5 * (self.n_features * math.log(2 * math.pi) + y.pow(2).sum(-1)) + log_det
        return torch.logsumexp(log_gauss + self.log_weights, dim=1)


class MsmaNll(nn.Module):
    """x (B, C, X, Y, Z) -> (B,) image-level MSMA NLL, recomputed through the score network in torch.

    Features: log(max(||sigma_i s(x, sigma_i)||_2, floor)) at the GMM's levels, as
    :func:`spatial_msma.score.norms.image_norms` and :func:`spatial_msma.score.msma.image_features` compute
    them from the cache. The levels of each image go through the network as one batch.
    """

    def __init__(self, net: ScoreNet, gmm: TorchGmm, sigmas: np.ndarray | torch.Tensor):
        super().__init__()
        self.net = net
        self.gmm = gmm
        sig = torch.as_tensor(np.asarray(sigmas, np.float32))
        if sig.ndim != 1 or len(sig) != gmm.n_features:
            raise InputError(f"MSMA NLL: {tuple(sig.shape)} sigmas for a GMM on {gmm.n_features} features")
        self.register_buffer("sigmas", sig.to(next(net.parameters()).device))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b, n_levels = x.shape[0], len(self.sigmas)
        sig = self.sigmas.repeat(b)
        scaled = self.net(x.repeat_interleave(n_levels, dim=0), sig) * sig.reshape(-1, 1, 1, 1, 1)
        norms = scaled.flatten(1).norm(dim=1).reshape(b, n_levels)
        return torch.log(norms.clamp_min(NORM_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.gmm(self.features(x))


# ---------------------------------------------------------------------------------------------------------
# Guided backpropagation through SiLU


class GuidedSiluBackprop(GuidedBackprop):
    """captum's ``GuidedBackprop`` whose guided rule also covers ``nn.SiLU`` modules.

    captum registers its rule -- clamp the gradient w.r.t. the activation's input at zero -- on
    ``nn.ReLU`` modules only. Here the same rule goes on every ``nn.ReLU`` and ``nn.SiLU`` module through
    torch's ``register_full_backward_hook`` (fires once per call, so a module applied twice, like the
    ``nonlinearity`` of MONAI's resnet blocks, is guided at both places); captum removes the hooks after
    each attribution as it does its own.
    """

    def _register_hooks(self, module: nn.Module) -> None:
        if isinstance(module, nn.ReLU | nn.SiLU):
            if getattr(module, "inplace", False):
                raise InputError(f"guided backprop: in-place activation {module} cannot carry a backward hook")
            self.backward_hooks.append(module.register_full_backward_hook(_guided_rule))


def _guided_rule(module: nn.Module, grad_input: tuple[torch.Tensor | None, ...],
                 grad_output: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if g is None else F.relu(g) for g in grad_input)


# ---------------------------------------------------------------------------------------------------------
# Fitting, loading, heatmaps


def fit_gradcam_gmm(
    train: str | os.PathLike,
    out: str | os.PathLike,
    cfg: Mapping[str, object] | GradcamConfig,
    seed: int,
    logger: logging.Logger | None = None,
) -> GaussianMixture:
    """Fit the image-level GMM on the train score-norm cache (the set's manifest) and write its parameters
    (full-form precision Cholesky factors), the sigma levels and the train NLLs to ``out``."""
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, GradcamConfig) else GradcamConfig.from_dict(cfg)
    norms = read_image_norms("train", train)
    levels = select_levels(len(norms.sigmas), cfg.n_levels)
    features = image_features(norms.image_norms, levels)
    gmm = fit_image_gmm(features, cfg.gmm_config(), seed)
    train_nll = -gmm.score_samples(features)
    with io.atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            format=np.array(GMM_FORMAT),
            weights=gmm.weights_,
            means=gmm.means_,
            precision_cholesky=full_precision_cholesky(gmm),
            covariance_type=np.array(gmm.covariance_type),
            sigmas=norms.sigmas[levels].astype(np.float32),
            levels=levels,
            train_nll=train_nll,
            train_subjects=np.array(norms.subjects),
        )
    logger.info("GradCAM-MSMA GMM: %d components (%s) on %d levels (sigma %.4g..%.4g) of %d train images; "
                "train NLL %.3g +- %.3g", cfg.n_components, cfg.covariance_type, len(levels),
                norms.sigmas[levels][0], norms.sigmas[levels][-1], len(features), train_nll.mean(), train_nll.std())
    return gmm


def read_gradcam_gmm(path: str | os.PathLike) -> tuple[TorchGmm, np.ndarray]:
    """The torch GMM and its sigma levels from a file of :func:`fit_gradcam_gmm`."""
    try:
        with np.load(path) as data:
            content = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"GradCAM-MSMA GMM {path}: unreadable ({type(err).__name__}: {err})") from err
    if str(content.get("format", "")) != GMM_FORMAT:
        raise InputError(f"GradCAM-MSMA GMM {path}: not a {GMM_FORMAT} file")
    gmm = TorchGmm(content["weights"], content["means"], content["precision_cholesky"])
    return gmm, content["sigmas"]


@dataclass
class GradcamDetector:
    """GradCAM-MSMA's detector: the differentiable NLL and the Grad-CAM layer, all :func:`gradcam_heatmap` needs."""

    nll: MsmaNll
    layer: nn.Module
    layer_name: str
    guided_silu: bool = True
    label: ClassVar[str] = "GradCAM-MSMA heatmaps"
    steps_per_image: ClassVar[int] = 1

    def settings(self) -> str:
        return (f"layer {self.layer_name}, {len(self.nll.sigmas)} levels, guided SiLU {self.guided_silu}, "
                f"device {self.nll.sigmas.device}")

    def heatmap(self, case: Case) -> np.ndarray:
        return gradcam_heatmap(self, case.image, case.brain)[0]


def late_layers(net: ScoreNet) -> list[str]:
    """Names of the score network's decoder blocks and output head, to suggest in an error message."""
    names = [name for name, _ in net.named_modules()]
    return [name for name in names if name.count(".") <= 2 and name.startswith(("unet.up", "unet.out"))]


def last_decoder_block(net: ScoreNet) -> str:
    """``unet.up_blocks.<last>``: the full-resolution decoder block before the output head."""
    return f"unet.up_blocks.{len(net.unet.up_blocks) - 1}"


def build_detector(net: ScoreNet, gmm: TorchGmm, sigmas: np.ndarray, layer: str,
                   guided_silu: bool = True) -> GradcamDetector:
    """Wrap a score network and a GMM into a detector; ``layer`` must name a module of ``net``."""
    modules = dict(net.named_modules())
    if layer == "auto":
        layer = last_decoder_block(net)
    if layer not in modules:
        raise InputError(f"config gradcam_msma.layer: the score network has no module {layer!r}; late layers: "
                         f"{late_layers(net)}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return GradcamDetector(MsmaNll(net, gmm.to(next(net.parameters()).device), sigmas), modules[layer], layer,
                           guided_silu)


def load_gradcam_detector(score_model: str | os.PathLike, gmm_path: str | os.PathLike,
                          cfg: Mapping[str, object] | GradcamConfig) -> GradcamDetector:
    """The detector of a score model and a GMM file, on the device of ``cfg`` (the ``gradcam_msma`` section)."""
    cfg = cfg if isinstance(cfg, GradcamConfig) else GradcamConfig.from_dict(cfg)
    model = load_score_model(score_model, resolve_device(cfg.device))
    gmm, sigmas = read_gradcam_gmm(gmm_path)
    return build_detector(model.net, gmm, sigmas, cfg.layer, cfg.guided_silu)


def gradcam_heatmap(detector: GradcamDetector, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Guided Grad-CAM of the image-level MSMA NLL for one (C, X, Y, Z) image: (heatmap (X, Y, Z) float32,
    0 outside ``mask``; the image's NLL)."""
    net = detector.nll.net
    net.check_image(image, "GradCAM-MSMA")
    if mask.shape != image.shape[1:]:
        raise InputError(f"GradCAM-MSMA: mask {mask.shape} does not match image {image.shape[1:]}")
    device = detector.nll.sigmas.device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[None].requires_grad_(True)
    n_levels = len(detector.nll.sigmas)

    cam = LayerGradCam(detector.nll, detector.layer).attribute(x, relu_attributions=False)  # (L, 1, h, w, d)
    if cam.shape[0] != n_levels or cam.shape[1] != 1:
        raise InputError(f"GradCAM-MSMA: layer {detector.layer_name} gave a Grad-CAM of shape {tuple(cam.shape)}; "
                         f"expected one map per level ({n_levels}): pick a layer inside the UNet")
    cam = F.relu(cam.sum(0, keepdim=True))  # the levels' copies as one layer of L x C channels
    cam = LayerAttribution.interpolate(cam, tuple(image.shape[1:]), "trilinear")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")  # captum's notice, every call
        if detector.guided_silu:
            guided = GuidedSiluBackprop(detector.nll).attribute(x)
        else:
            guided = GuidedBackprop(detector.nll).attribute(x)  # no ReLU in the net: the plain gradient
    heat = (cam * guided).abs().sum(1)[0].detach().cpu().numpy()
    with torch.no_grad():
        nll = float(detector.nll(x)[0])
    return np.where(mask, heat, 0.0).astype(np.float32), nll
