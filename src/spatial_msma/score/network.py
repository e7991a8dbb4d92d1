"""The noise-conditional score network: MONAI's 3D ``DiffusionModelUNet`` conditioned on log sigma.

Why this network: of a plain MONAI UNet fed log sigma as an extra input channel and ``DiffusionModelUNet``
fed log sigma through its sinusoidal timestep embedding, only the latter beat an intensity z-score at
localising lesions (benchmarks/README.md). The noise conditioning is what matters, so the network takes
``timestep = timestep_scale * log(sigma)`` as a float (B,) tensor (scaled, or most of the sinusoidal
embedding stays flat over the few units that log sigma spans) and its output is divided by sigma
("scale by sigma", as in NCSN++), so an untrained net (zero-initialised output layer) predicts score 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from spatial_msma.io import InputError, config_section, plain_dict
from spatial_msma.score.sde import VESDE
from spatial_msma.training import VolumeNet, load_model_file

#: Tag of a score model file written by :func:`spatial_msma.score.train.train_score_model`.
MODEL_FORMAT = "spatial_msma.score_model.v1"

#: Mid-block tokens above which attention goes through ``scaled_dot_product_attention`` (flash /
#: memory-efficient kernels) when ``use_flash_attention`` is ``"auto"``: at 2 mm (24x28x20 = 13440 tokens)
#: the plain attention matrix needs about 5.8 GB, at 4 mm (12x14x10 = 1680) it is small and plain is fine.
FLASH_ATTENTION_MIN_TOKENS = 4096


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the network; stored in the model file so it is self-describing."""

    channels: tuple[int, ...] = (16, 32, 32)
    attention_levels: tuple[bool, ...] = (False, False, False)
    mid_attention: bool = True
    num_res_blocks: int = 2
    norm_num_groups: int = 8
    num_head_channels: int = 8
    use_flash_attention: bool | str = "auto"
    timestep_scale: float = 250.0

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None, where: str = "score.network") -> NetworkConfig:
        """Build from a config mapping; an unknown key is an error that names it."""
        cfg = config_section(cls, cfg, where, lists=("channels", "attention_levels"))
        out = cls(**cfg)  # type: ignore[arg-type]
        if "attention_levels" not in cfg:
            out = cls(**{**asdict(out), "attention_levels": (False,) * len(out.channels)})
        out.validate(where)
        return out

    def validate(self, where: str = "score.network") -> None:
        if len(self.attention_levels) != len(self.channels):
            raise InputError(
                f"config {where}: attention_levels has {len(self.attention_levels)} entries, "
                f"channels has {len(self.channels)}"
            )
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise InputError(
                f"config {where}: channels {bad} are not multiples of norm_num_groups {self.norm_num_groups}"
            )
        if min(self.channels) < 2 * self.norm_num_groups:
            # MONAI adds the timestep embedding as a per-channel offset right before a GroupNorm; with one
            # channel per group the norm subtracts that offset again and the net ignores sigma entirely.
            raise InputError(
                f"config {where}: norm_num_groups {self.norm_num_groups} leaves fewer than 2 channels per group "
                f"at channels {list(self.channels)}; the sigma embedding would be normalised away"
            )
        if self.use_flash_attention not in (True, False, "auto"):
            raise InputError(f"config {where}.use_flash_attention: expected true, false or auto")

    def to_dict(self) -> dict[str, object]:
        return plain_dict(self)

    @property
    def divisor(self) -> int:
        """Each spatial size must divide by this (one factor 2 per down-sampling)."""
        return 2 ** (len(self.channels) - 1)


class ScoreNet(VolumeNet):
    """s(x, sigma) = UNet(x, timestep_scale * log sigma) / sigma for (B, C, X, Y, Z) inputs and (B,) sigmas."""

    def __init__(self, in_channels: int, image_shape: tuple[int, int, int], net_cfg: NetworkConfig):
        super().__init__(in_channels, image_shape, net_cfg.divisor,
                         f"which a UNet with {len(net_cfg.channels)} levels needs; crop/pad the images to a "
                         f"multiple of {net_cfg.divisor}")
        self.net_cfg = net_cfg
        flash = net_cfg.use_flash_attention
        if flash == "auto":
            tokens = 1
            for n in self.image_shape:
                tokens *= n // net_cfg.divisor
            flash = tokens > FLASH_ATTENTION_MIN_TOKENS
        self.unet = DiffusionModelUNet(
            **self.monai_channels(),
            num_res_blocks=net_cfg.num_res_blocks,
            channels=net_cfg.channels,
            attention_levels=net_cfg.attention_levels,
            norm_num_groups=net_cfg.norm_num_groups,
            num_head_channels=net_cfg.num_head_channels,
            use_flash_attention=bool(flash),
        )
        if not net_cfg.mid_attention:
            # MONAI always builds a self-attention mid-block (the authors' NCSN++ has none); replacing it by
            # Identity is the only way to switch it off. On by default: chosen on the lesioned validation set.
            self.unet.middle_block.attention = nn.Identity()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.shape[0] != x.shape[0]:
            sigma = sigma.expand(x.shape[0])
        timesteps = self.net_cfg.timestep_scale * torch.log(sigma)
        out = self.unet(x, timesteps)
        return out / sigma.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass
class ScoreModel:
    """A trained score network (EMA weights, eval mode) with its noise schedule and the file's metadata."""

    net: ScoreNet
    sde: VESDE
    meta: dict[str, object]


def load_score_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> ScoreModel:
    """Rebuild the network described by a model file and load its weights (no config needed)."""
    net, meta = load_model_file(path, MODEL_FORMAT, "score model", ScoreNet, NetworkConfig.from_dict, device)
    sde = VESDE(float(meta["sigma_min"]), float(meta["sigma_max"]), float(meta["t_eps"]))
    return ScoreModel(net=net, sde=sde, meta=meta)
