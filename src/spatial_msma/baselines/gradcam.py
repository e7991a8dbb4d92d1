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
- Heatmap = sum over channels of Grad-CAM x guided gradient (signed, or its absolute value), 0 outside the
  brain mask.

The density and the attribution details are switches (config ``gradcam_msma``), each defaulting to what the
lesioned validation split preferred (benchmarks/README.md, "GradCAM-MSMA density and attribution"):

- ``standardise``: z-score the log norms with the training mean and SD before the GMM (the authors do). The
  log norms of neighbouring levels are near copies (correlation ~0.99) with SDs of a few hundredths: a full
  covariance on the raw features is near singular, and ``reg_covar`` (added to the covariance diagonal)
  means nothing without a feature scale. Standardised, ``reg_covar`` is a shrinkage relative to each
  feature's variance. :class:`TorchGmm` applies the same affine map, so the gradients flow through it.
- ``n_components: auto``: the number of components (1..``max_components``) with the best ``cv_folds``-fold
  cross-validated held-out log-likelihood on the training features (seeded folds; the smallest on ties),
  as the authors pick it; an integer fixes it.
- ``layer_input``: Grad-CAM at the layer's INPUT (its first tensor argument: for a MONAI up block the
  ``hidden_states`` from the block before, not the skip connections), as the authors' captum call
  ``LayerGradCam(..., attribute_to_layer_input=True)``. MONAI calls its blocks with keyword arguments,
  which captum's input hook cannot see, so an identity probe module is threaded onto that argument
  (:class:`LayerInputProbe`) and Grad-CAM looks at the probe's output -- the same tensor.
- ``rectify_per_level``: rectify each level's Grad-CAM map before adding the levels (the authors' per-level
  maps) instead of rectifying their sum (the Grad-CAM of the concatenated layer).
- ``signed_product``: keep the sign of Grad-CAM x guided gradient (summed over channels) instead of its
  absolute value; the authors' Guided Grad-CAM is the signed product.
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
from sklearn.model_selection import KFold
from torch import nn

from spatial_msma import io
from spatial_msma.io import InputError, check_number, config_section
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

#: Tag of a GMM file written by :func:`fit_gradcam_gmm` (v2: the feature standardisation is stored).
GMM_FORMAT = "spatial_msma.gradcam_gmm.v2"

#: Floor of a standardising SD: a constant feature is left unscaled instead of divided by zero.
SD_FLOOR = 1e-12

#: Switches that must be true or false.
BOOL_KEYS = ("standardise", "guided_silu", "layer_input", "rectify_per_level", "signed_product")


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
    n_components: int | str = "auto"
    max_components: int = 4
    cv_folds: int = 5
    covariance_type: str = "diag"
    reg_covar: float = 1e-3
    standardise: bool = True
    layer: str = "auto"
    guided_silu: bool = True
    layer_input: bool = False
    rectify_per_level: bool = False
    signed_product: bool = False
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> GradcamConfig:
        out = cls(**config_section(cls, cfg, "gradcam_msma"))  # type: ignore[arg-type]
        if out.n_components != "auto":
            check_number(out.n_components, "gradcam_msma.n_components", 1, integer=True)
        check_number(out.max_components, "gradcam_msma.max_components", 1, integer=True)
        check_number(out.cv_folds, "gradcam_msma.cv_folds", 2, integer=True)
        out.gmm_config().check("gradcam_msma")
        if not isinstance(out.layer, str) or not out.layer:
            raise InputError(f"config gradcam_msma.layer: expected a module name, got {out.layer!r}")
        for key in BOOL_KEYS:
            if not isinstance(getattr(out, key), bool):
                raise InputError(f"config gradcam_msma.{key}: expected true or false, got {getattr(out, key)!r}")
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def gmm_config(self, n_components: int | None = None) -> MsmaImageConfig:
        """The GMM keys as ``msma_image``'s; ``n_components`` resolves ``auto`` (1 stands in for the checks)."""
        if n_components is None:
            n_components = 1 if self.n_components == "auto" else int(self.n_components)
        return MsmaImageConfig(n_levels=self.n_levels, n_components=n_components,
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
    """The log-density of a fitted Gaussian mixture in torch (float64), differentiable in its input.

    ``shift`` and ``scale`` (default 0 and 1) standardise the features first, ``(f - shift) / scale``, as
    the GMM was fitted: the value is then ``score_samples`` of the standardised features (the log-density
    of the raw ones less the constant ``sum(log scale)``, which no gradient sees).
    """

    def __init__(self, weights: np.ndarray, means: np.ndarray, precision_cholesky: np.ndarray,
                 shift: np.ndarray | None = None, scale: np.ndarray | None = None):
        super().__init__()
        k, d = np.shape(means)
        if np.shape(weights) != (k,) or np.shape(precision_cholesky) != (k, d, d):
            raise InputError(f"GMM parameters: weights {np.shape(weights)}, means {np.shape(means)} and "
                             f"precision Cholesky factors {np.shape(precision_cholesky)} do not fit together")
        shift = np.zeros(d) if shift is None else np.asarray(shift, np.float64)
        scale = np.ones(d) if scale is None else np.asarray(scale, np.float64)
        if shift.shape != (d,) or scale.shape != (d,) or not (scale > 0).all():
            raise InputError(f"GMM standardisation: shift {shift.shape} and scale {scale.shape} must be {d} "
                             "numbers each, the scales positive")
        self.register_buffer("log_weights", torch.log(torch.as_tensor(weights, dtype=torch.float64)))
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.register_buffer("prec_chol", torch.as_tensor(precision_cholesky, dtype=torch.float64))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float64))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64))

    @classmethod
    def from_sklearn(cls, gmm: GaussianMixture, shift: np.ndarray | None = None,
                     scale: np.ndarray | None = None) -> TorchGmm:
        return cls(gmm.weights_, gmm.means_, full_precision_cholesky(gmm), shift, scale)

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) features -> (B,) log-density (what sklearn's ``score_samples`` returns on the standardised
        features)."""
        f = (features.to(torch.float64) - self.shift) / self.scale
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


class LayerInputProbe(nn.Identity):
    """An identity module threaded onto a layer's input, so that Grad-CAM of the probe's output is Grad-CAM
    of the layer's input (captum's ``attribute_to_layer_input=True``, which only sees positional arguments:
    MONAI calls its UNet blocks with keywords). :meth:`attach` hooks it onto the first tensor argument."""

    def attach(self, layer: nn.Module) -> torch.utils.hooks.RemovableHandle:
        def thread(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args and torch.is_tensor(args[0]):
                return (self(args[0]), *args[1:]), kwargs
            for key, value in kwargs.items():
                if torch.is_tensor(value):
                    return args, {**kwargs, key: self(value)}
            raise InputError(f"GradCAM-MSMA layer_input: {type(module).__name__} got no tensor input")

        return layer.register_forward_pre_hook(thread, with_kwargs=True)


# ---------------------------------------------------------------------------------------------------------
# Fitting, loading, heatmaps


def standardisation(features: np.ndarray, standardise: bool) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) of the features: the training mean and SD (ddof 0, as sklearn's ``StandardScaler``)
    when ``standardise``, else 0 and 1."""
    d = features.shape[1]
    if not standardise:
        return np.zeros(d), np.ones(d)
    return features.mean(0), np.maximum(features.std(0), SD_FLOOR)


def choose_components(features: np.ndarray, cfg: GradcamConfig, seed: int) -> tuple[int, np.ndarray]:
    """The number of components (1..``max_components``) whose GMM has the best mean held-out log-likelihood
    per image over ``cv_folds`` seeded folds of the training features; the smallest on ties (within 1e-9).
    Returns it and the (max_components,) CV log-likelihoods (NaN where a fold is too small to fit)."""
    folds = KFold(n_splits=min(cfg.cv_folds, len(features)), shuffle=True, random_state=seed)
    scores = np.full(cfg.max_components, np.nan)
    for k in range(1, cfg.max_components + 1):
        held_out = []
        for fit_rows, test_rows in folds.split(features):
            if len(fit_rows) < max(k, 2):
                break
            gmm = fit_image_gmm(features[fit_rows], cfg.gmm_config(k), seed)
            held_out.append(gmm.score_samples(features[test_rows]))
        else:
            scores[k - 1] = float(np.concatenate(held_out).mean())
    if np.isnan(scores).all():
        raise InputError(f"gradcam_msma.n_components auto: {len(features)} training images are too few to "
                         f"cross-validate in {cfg.cv_folds} folds")
    best = np.nanmax(scores)
    return int(np.flatnonzero(scores >= best - 1e-9)[0]) + 1, scores



def fit_gradcam_gmm(
    train: str | os.PathLike,
    out: str | os.PathLike,
    cfg: Mapping[str, object] | GradcamConfig,
    seed: int,
    logger: logging.Logger | None = None,
) -> GaussianMixture:
    """Fit the image-level GMM on the train score-norm cache (the set's manifest) -- on the standardised log
    norms with ``standardise``, with the cross-validated number of components with ``n_components: auto``
    -- and write its parameters (full-form precision Cholesky factors), the standardisation, the sigma
    levels, the CV log-likelihoods and the train NLLs to ``out``. Returns the sklearn GMM (of the
    standardised features)."""
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, GradcamConfig) else GradcamConfig.from_dict(cfg)
    norms = read_image_norms("train", train)
    levels = select_levels(len(norms.sigmas), cfg.n_levels)
    raw = image_features(norms.image_norms, levels)
    shift, scale = standardisation(raw, cfg.standardise)
    features = (raw - shift) / scale
    cv_loglik = np.array([])
    if cfg.n_components == "auto":
        n_components, cv_loglik = choose_components(features, cfg, seed)
        logger.info("GradCAM-MSMA GMM: %d-fold CV log-likelihood per image for 1..%d components: %s -> %d",
                    cfg.cv_folds, cfg.max_components, np.round(cv_loglik, 3).tolist(), n_components)
    else:
        n_components = int(cfg.n_components)
    gmm = fit_image_gmm(features, cfg.gmm_config(n_components), seed)
    train_nll = -gmm.score_samples(features)
    with io.atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            format=np.array(GMM_FORMAT),
            weights=gmm.weights_,
            means=gmm.means_,
            precision_cholesky=full_precision_cholesky(gmm),
            covariance_type=np.array(gmm.covariance_type),
            feature_shift=shift,
            feature_scale=scale,
            cv_loglik=cv_loglik,
            sigmas=norms.sigmas[levels].astype(np.float32),
            levels=levels,
            train_nll=train_nll,
            train_subjects=np.array(norms.subjects),
        )
    logger.info("GradCAM-MSMA GMM: %d components (%s, reg_covar %g, standardised %s) on %d levels (sigma "
                "%.4g..%.4g) of %d train images; train NLL %.3g +- %.3g", n_components, cfg.covariance_type,
                cfg.reg_covar, cfg.standardise, len(levels), norms.sigmas[levels][0], norms.sigmas[levels][-1],
                len(features), train_nll.mean(), train_nll.std())
    return gmm


def read_gradcam_gmm(path: str | os.PathLike) -> tuple[TorchGmm, np.ndarray]:
    """The torch GMM (with its standardisation) and its sigma levels from a file of :func:`fit_gradcam_gmm`."""
    try:
        with np.load(path) as data:
            content = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"GradCAM-MSMA GMM {path}: unreadable ({type(err).__name__}: {err})") from err
    if str(content.get("format", "")) != GMM_FORMAT:
        raise InputError(f"GradCAM-MSMA GMM {path}: not a {GMM_FORMAT} file (refit it)")
    gmm = TorchGmm(content["weights"], content["means"], content["precision_cholesky"], content["feature_shift"],
                   content["feature_scale"])
    return gmm, content["sigmas"]


@dataclass
class GradcamDetector:
    """GradCAM-MSMA's detector: the differentiable NLL and the Grad-CAM layer (the layer itself, or the probe
    on its input), all :func:`gradcam_heatmap` needs."""

    nll: MsmaNll
    layer: nn.Module
    layer_name: str
    guided_silu: bool = True
    layer_input: bool = False
    rectify_per_level: bool = False
    signed_product: bool = False
    label: ClassVar[str] = "GradCAM-MSMA heatmaps"
    steps_per_image: ClassVar[int] = 1

    def settings(self) -> str:
        rectified = "per level" if self.rectify_per_level else "after the level sum"
        return (f"layer {self.layer_name} ({'input' if self.layer_input else 'output'}), {len(self.nll.sigmas)} "
                f"levels, guided SiLU {self.guided_silu}, Grad-CAM rectified {rectified}, "
                f"{'signed' if self.signed_product else 'absolute'} product, device {self.nll.sigmas.device}")

    def heatmap(self, case: Case) -> np.ndarray:
        return gradcam_heatmap(self, case.image, case.brain)[0]


def late_layers(net: ScoreNet) -> list[str]:
    """Names of the score network's decoder blocks and output head, to suggest in an error message."""
    names = [name for name, _ in net.named_modules()]
    return [name for name in names if name.count(".") <= 2 and name.startswith(("unet.up", "unet.out"))]


def last_decoder_block(net: ScoreNet) -> str:
    """``unet.up_blocks.<last>``: the full-resolution decoder block before the output head."""
    return f"unet.up_blocks.{len(net.unet.up_blocks) - 1}"


def build_detector(net: ScoreNet, gmm: TorchGmm, sigmas: np.ndarray, layer: str, guided_silu: bool = True,
                   layer_input: bool = False, rectify_per_level: bool = False,
                   signed_product: bool = False) -> GradcamDetector:
    """Wrap a score network and a GMM into a detector; ``layer`` must name a module of ``net``. With
    ``layer_input`` a :class:`LayerInputProbe` is hooked onto that module's input (the network is changed
    in place: build one such detector per network)."""
    modules = dict(net.named_modules())
    if layer == "auto":
        layer = last_decoder_block(net)
    if layer not in modules:
        raise InputError(f"config gradcam_msma.layer: the score network has no module {layer!r}; late layers: "
                         f"{late_layers(net)}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    target = modules[layer]
    if layer_input:
        target = LayerInputProbe()
        target.attach(modules[layer])
    return GradcamDetector(MsmaNll(net, gmm.to(next(net.parameters()).device), sigmas), target, layer,
                           guided_silu, layer_input, rectify_per_level, signed_product)


def load_gradcam_detector(score_model: str | os.PathLike, gmm_path: str | os.PathLike,
                          cfg: Mapping[str, object] | GradcamConfig) -> GradcamDetector:
    """The detector of a score model and a GMM file, on the device of ``cfg`` (the ``gradcam_msma`` section)."""
    cfg = cfg if isinstance(cfg, GradcamConfig) else GradcamConfig.from_dict(cfg)
    model = load_score_model(score_model, resolve_device(cfg.device))
    gmm, sigmas = read_gradcam_gmm(gmm_path)
    return build_detector(model.net, gmm, sigmas, cfg.layer, cfg.guided_silu, cfg.layer_input,
                          cfg.rectify_per_level, cfg.signed_product)


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
    if detector.rectify_per_level:
        cam = F.relu(cam).sum(0, keepdim=True)  # each level's Grad-CAM map rectified, then added
    else:
        cam = F.relu(cam.sum(0, keepdim=True))  # the levels' copies as one layer of L x C channels
    cam = LayerAttribution.interpolate(cam, tuple(image.shape[1:]), "trilinear")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")  # captum's notice, every call
        if detector.guided_silu:
            guided = GuidedSiluBackprop(detector.nll).attribute(x)
        else:
            guided = GuidedBackprop(detector.nll).attribute(x)  # no ReLU in the net: the plain gradient
    product = cam * guided
    heat = (product if detector.signed_product else product.abs()).sum(1)[0].detach().cpu().numpy()
    with torch.no_grad():
        nll = float(detector.nll(x)[0])
    return np.where(mask, heat, 0.0).astype(np.float32), nll
