"""The ``flow`` config section as a typed, validated object.

The workflow passes ``config["flow"]`` as a plain dict, with the overrides of the job's method applied
(:func:`spatial_msma.methods.flow_section`: an ablation is one entry in the method registry instead of a
second config section that can drift from the first); :meth:`FlowConfig.from_dict` turns it into a
:class:`FlowConfig`, and unknown keys and bad values are an :class:`~spatial_msma.io.InputError` naming
the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from spatial_msma.io import InputError, check_number, check_numbers, config_section, plain_dict


@dataclass(frozen=True)
class GlobalFeaturesConfig:
    """The image encoder h(x): a strided large-kernel 3D conv stack, tokens, attention pooling.

    Paper code (2 mm): kernel 17, stride 8, then stride 2, 128 output dims. The default is that receptive
    field at 4 mm (kernel 9, stride 4: 68 mm, and the same 6x7x5 = 210 tokens on 48x56x40) with 32 dims.
    ``channels`` are the widths of the two conv layers; ``heads`` the attention-pooling heads (must divide
    the last width).
    """

    channels: tuple[int, int] = (8, 16)
    dims: int = 32
    kernel: int = 9
    stride: int = 4
    heads: int = 4

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        if len(channels) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) for c in channels):
            raise InputError(f"flow.global_features.channels: need 2 integer widths, got {self.channels!r}")
        object.__setattr__(self, "channels", channels)
        _check_types(self, "flow.global_features")
        check_numbers(self, "flow.global_features", ("dims", "kernel", "stride", "heads"), 0, above=True)
        for width in channels:
            check_number(width, "flow.global_features.channels", 0, above=True)
        if channels[1] % self.heads:
            raise InputError(f"flow.global_features.heads: {self.heads} does not divide channels[1] = {channels[1]}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GlobalFeaturesConfig:
        return cls(**config_section(cls, raw, "flow.global_features"))


@dataclass(frozen=True)
class FlowConfig:
    """Every knob of the Spatial-MSMA density model, its training and its heatmaps (defaults = 2-core CPU).

    Model
      model: ``flow`` (the conditional normalizing flow) or ``voxel_gaussian`` (the per-voxel Gaussian
        ablation: mean/covariance of the features per voxel over the training subjects, pooled over a
        ``gaussian_pool``^3 neighbourhood, ``gaussian_ridge`` added to the covariance diagonal).
      flow_type: ``autoregressive`` (masked autoregressive RQ-spline: one MADE pass per layer for the
        density; it learned faster per step than coupling splines on a toy problem) or ``coupling`` (the
        paper code's coupled RQ-spline). Each of ``n_layers`` blocks is an LU-linear permutation + one
        spline layer with ``bins`` bins on [-tail_bound, tail_bound] (identity tails), ``blocks`` residual
        blocks of ``hidden`` units. ``maf_layer`` prepends the code's one masked affine autoregressive layer.
      base: ``conditional_gmm`` (the paper's: mode means/scales/weights from an MLP on the context,
        ``base_hidden`` units) or ``gmm`` (trainable, context-free; the code's default); ``n_modes``.
      features: ``log_transform`` -> log(norm + log_eps); the flow sees these standardised per level with
        the training mean/SD (stored in the model). ``max_sigma`` keeps only levels with sigma <= it
        (None: all levels). ``input_norm``: ``global`` feeds the flow those standardised features;
        ``voxel`` (ours) further centres and scales them by the training mean/SD at the voxel (pooled like
        the voxel Gaussian, stored in the model) so the flow models the deviation from the voxel's norm,
        not the anatomy; the density keeps the Jacobian, so NLLs are in the same units either way.
      context: ``use_position`` (sinusoidal code of the voxel index, ``position_dims`` a multiple of 6,
        wavelengths from ``min_wavelength`` voxels to twice the grid) and ``use_global`` (h(x)).
    Training
      ``steps`` optimiser steps of ``batch_voxels`` random in-brain training voxels drawn from
      ``images_per_step`` random training images (``voxels_per_subject``: keep only that many seeded random
      in-brain voxels per training image in memory, for cohorts too large to hold whole; None: all);
      AdamW (``lr``, ``weight_decay``), linear warm-up over
      ``warmup_steps``, gradient clipping at ``grad_clip``, EMA with ``ema_decay``; the validation NLL on a
      fixed sample of ``val_voxels`` val voxels every ``val_every`` steps picks the final weights (raw or
      EMA, whichever was lowest at any evaluation); a resumable checkpoint every ``checkpoint_every``.
    Heatmaps
      ``one_sided``: score each voxel at max(features, conditional mode), level-wise, so only norms HIGHER
      than expected raise the score (the lesion signal is an increase of the norms, see ``flow.heatmap``);
      the flow's conditional mode is evaluated every ``mode_stride`` voxels and interpolated (1: exact);
      ``heatmap_jacobian``: keep the per-voxel constants of the density in the heatmap (the log-Jacobian
      -sum log s_p of ``input_norm: voxel``, the voxel Gaussian's 0.5 log|cov_p|). Off (ours): the heatmap
      is the NLL of the per-voxel standardised norms, because those constants depend on the voxel alone:
      they paint the healthy cohort's variability map (high at tissue borders) onto every image, the same
      for a lesion as for healthy tissue. Chosen on the lesioned validation split (README);
      ``chunk_voxels`` voxels per forward pass. ``device``: ``auto`` (CUDA if present), ``cpu``, ``cuda``.
    """

    model: str = "flow"
    flow_type: str = "autoregressive"
    maf_layer: bool = True
    n_layers: int = 4
    hidden: int = 64
    blocks: int = 2
    bins: int = 8
    tail_bound: float = 4.0
    base: str = "conditional_gmm"
    n_modes: int = 10
    base_hidden: int = 64
    log_transform: bool = True
    input_norm: str = "voxel"
    log_eps: float = 1e-6
    max_sigma: float | None = None
    use_position: bool = True
    position_dims: int = 24
    min_wavelength: float = 4.0
    use_global: bool = True
    global_features: GlobalFeaturesConfig = field(default_factory=GlobalFeaturesConfig)
    steps: int = 500
    batch_voxels: int = 4096
    images_per_step: int = 8
    voxels_per_subject: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    val_every: int = 100
    val_voxels: int = 16384
    checkpoint_every: int = 100
    one_sided: bool = True
    mode_stride: int = 2
    heatmap_jacobian: bool = False
    chunk_voxels: int = 32768
    gaussian_pool: int = 3
    gaussian_ridge: float = 1e-3
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.global_features, GlobalFeaturesConfig):
            object.__setattr__(self, "global_features", GlobalFeaturesConfig.from_dict(self.global_features))
        _check_types(self, "flow")
        choices = {
            "model": ("flow", "voxel_gaussian"),
            "flow_type": ("autoregressive", "coupling"),
            "base": ("gmm", "conditional_gmm"),
            "input_norm": ("global", "voxel"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise InputError(f"flow.{key}: {getattr(self, key)!r} is not one of {allowed}")
        positive = ("hidden", "blocks", "bins", "n_modes", "base_hidden", "steps", "batch_voxels",
                    "images_per_step", "val_every", "val_voxels", "checkpoint_every", "chunk_voxels", "mode_stride",
                    "gaussian_pool", "lr", "tail_bound", "log_eps", "min_wavelength")
        check_numbers(self, "flow", positive, 0, above=True)
        check_numbers(self, "flow", ("n_layers", "warmup_steps", "weight_decay", "grad_clip", "gaussian_ridge"), 0)
        check_number(self.voxels_per_subject, "flow.voxels_per_subject", 0, above=True, integer=True, optional=True)
        check_number(self.ema_decay, "flow.ema_decay", 0, high=1, below=True)
        if self.use_position and self.position_dims % 6:
            raise InputError(f"flow.position_dims: must be a multiple of 6 (sin+cos per axis), "
                             f"got {self.position_dims}")
        if self.gaussian_pool % 2 == 0:
            raise InputError(f"flow.gaussian_pool: must be odd, got {self.gaussian_pool}")
        if self.model == "flow" and self.base == "conditional_gmm" and self.context_dims == 0:
            raise InputError("flow.base: conditional_gmm needs a context; use_position and use_global "
                             "are both off (use base: gmm)")

    @property
    def context_dims(self) -> int:
        """Length of the context vector: position code + global image features (0 without either)."""
        return self.position_dims * self.use_position + self.global_features.dims * self.use_global

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (stored in model files so a model can be rebuilt without the config)."""
        return plain_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> FlowConfig:
        """Build from the config section; an unknown key is an error that names it."""
        return cls(**config_section(cls, raw, "flow"))


def _check_types(obj: object, where: str) -> None:
    """Each scalar field must have its default's type (ints accepted for floats; None for max_sigma)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default
        if default is dataclasses.MISSING or f.name == "channels":
            continue
        if default is None:
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            expected = "a number or null" if default is None else type(default).__name__
            raise InputError(f"{where}.{f.name}: expected {expected}, got {value!r}")
