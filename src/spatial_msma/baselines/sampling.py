"""Reverse-time sampling of the VE-SDE with the trained score model: the engine of the Inpaint and
Restoration baselines.

The sampler is Song et al.'s (2021) predictor-corrector scheme for the variance-exploding SDE:

* a descending noise grid ``sigma_0 > sigma_1 > ... > sigma_{N-1} = sigma_min > sigma_N = 0``, geometric in
  sigma (i.e. uniform in t, since sigma(t) is geometric), from sigma(t_start) down to sigma_min, then 0;
* at each level, ``corrector_steps`` Langevin corrector steps at sigma_i with the step size set by a
  signal-to-noise ratio ``snr`` (``eps = 2 (snr ||z|| / ||s||)^2`` per sample), then one reverse-diffusion
  predictor step to sigma_{i+1}: ``x <- x + (sigma_i^2 - sigma_{i+1}^2) s(x, sigma_i) + sqrt(sigma_i^2 -
  sigma_{i+1}^2) z`` (for the VE-SDE the reverse-diffusion and Euler-Maruyama predictors coincide up to how
  the step is discretised; this is the former, Song et al.'s default, which takes the sigma grid exactly);
* the last predictor step goes to sigma 0 and adds no noise: it returns the posterior mean given the
  last noisy state (Song et al.'s ``denoise=True``), so outputs carry no sampler noise.

One network evaluation per predictor step and per corrector step: ``steps * (1 + corrector_steps)`` in all.

Known-region replacement (inpainting, RePaint-style, Lugmayr et al. 2022): after every update that leaves
``x`` at noise level sigma, the known voxels are overwritten by the original data perturbed to that level,
``data + sigma z``. At the end (sigma 0) the known voxels therefore equal the data exactly, and the unknown
ones are sampled conditioned on what the network infers from their noisy, but consistent, surroundings.

Randomness: every batch element (one run of a baseline) has its own explicit ``torch.Generator``; noise is
drawn on the CPU from it and moved to the model's device. A run's result therefore depends on its seed and
not on which other runs share its batch (batch size is a speed choice, never a result change), and the
same seeds give the same bytes on the same machine and thread count.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Self

import torch

from spatial_msma.io import InputError, check_number, check_numbers, config_section
from spatial_msma.score.network import ScoreModel, load_score_model
from spatial_msma.score.sde import VESDE
from spatial_msma.training import resolve_device, set_deterministic

#: s(x, sigma) for a (B, ...) batch and (B,) noise levels: the trained ScoreNet, or an analytic score in tests.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """The keys the sampler-based baselines' config sections share (Inpaint, Restoration): ``runs`` runs per
    image of ``steps`` predictor steps (each after ``corrector_steps`` Langevin steps with ``snr``) from
    ``t_start``, ``batch_size`` runs per forward pass, on ``device``. A section sets the defaults of ``steps``
    and ``t_start``, its name (``section``: its errors and its runs' seeds) and its fewest ``min_runs``."""

    section: ClassVar[str]
    min_runs: ClassVar[int] = 1

    runs: int = 2
    steps: int
    corrector_steps: int = 0
    snr: float = 0.16
    t_start: float
    batch_size: int = 2
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> Self:
        out = cls(**config_section(cls, cfg, cls.section))
        out.validate()
        return out

    def validate(self) -> None:
        """Raise :class:`InputError` naming ``section.<key>`` for a setting out of range."""
        where = self.section
        check_number(self.runs, f"{where}.runs", self.min_runs, integer=True)
        check_numbers(self, where, ("steps", "batch_size"), 1, integer=True)
        check_number(self.corrector_steps, f"{where}.corrector_steps", 0, integer=True)
        check_number(self.snr, f"{where}.snr", 0, above=True)
        check_number(self.t_start, f"{where}.t_start", 0, above=True, high=1)
        if not isinstance(self.device, str):
            raise InputError(f"config {where}.device: expected a string, got {self.device!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def evaluations_per_volume(self) -> int:
        return self.runs * self.steps * (1 + self.corrector_steps)


@dataclass(frozen=True)
class SamplerDetector:
    """The score model, a sampler baseline's settings and the run's seed (each subject's runs are seeded
    from it); a baseline adds its ``config_class``, its ``label`` and its heatmap."""

    model: ScoreModel
    cfg: SamplerSettings
    seed: int
    config_class: ClassVar[type[SamplerSettings]]

    @classmethod
    def load(cls, model_path: str | Path, cfg: Mapping[str, object] | SamplerSettings, seed: int) -> Self:
        cfg = cfg if isinstance(cfg, cls.config_class) else cls.config_class.from_dict(cfg)  # type: ignore[arg-type]
        device = resolve_device(cfg.device)
        set_deterministic(device)
        return cls(load_score_model(model_path, device), cfg, seed)

    @property
    def steps_per_image(self) -> int:
        return self.cfg.runs * self.cfg.steps

    def settings(self) -> str:
        cfg, sde = self.cfg, self.model.sde
        sigma = float(sde.sigma(torch.tensor(cfg.t_start)))
        return (f"{cfg.runs} runs x {cfg.steps} steps (+{cfg.corrector_steps} corrector steps each, snr {cfg.snr:g}) "
                f"from t {cfg.t_start:g} (sigma {sigma:.4g}){self.path_settings()}, "
                f"batches of {cfg.batch_size} runs, device {next(self.model.net.parameters()).device}: "
                f"{cfg.evaluations_per_volume()} network evaluations per volume")

    def path_settings(self) -> str:
        """What :meth:`settings` says after the start of the sampler's path (the baseline's own settings)."""
        return ""


def sample_runs(model: ScoreModel, data: torch.Tensor, cfg: SamplerSettings, seed: int, subject: str,
                on_step: Callable[[int], None] | None = None,
                hide: Callable[[list[int]], torch.Tensor] | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """A baseline's ``cfg.runs`` sampler runs on one (C, X, Y, Z) image ``data``, in batches of ``cfg.batch_size``:
    yields each batch's run indices and its (B, C, X, Y, Z) samples, on the CPU.

    Each run starts at the data plus sigma_0 noise, from its own generator (:func:`run_seed` with the section's
    name). ``hide(runs)``, (B, 1, X, Y, Z) bool, marks voxels to in-paint: they start as pure noise and the
    others are kept by known-region replacement. ``on_step(k)`` counts the predictor steps of all runs so far.
    """
    device = next(model.net.parameters()).device
    sigmas = sigma_grid(model.sde, cfg.steps, cfg.t_start)
    score_fn = model_score_fn(model.net)
    known = data.to(device).unsqueeze(0)
    done = 0
    for start in range(0, cfg.runs, cfg.batch_size):
        runs = list(range(start, min(start + cfg.batch_size, cfg.runs)))
        generators = generators_for([run_seed(seed, subject, r, cfg.section) for r in runs])
        z = draw_noise(generators, data.shape, device)

        def step_cb(k: int, base: int = done, width: int = len(runs)) -> None:
            if on_step is not None:
                on_step(base + k * width)

        if hide is None:
            x = pc_sample(score_fn, known + float(sigmas[0]) * z, sigmas, generators, cfg.corrector_steps, cfg.snr,
                          on_step=step_cb)
        else:
            hidden = hide(runs).to(device)
            x = torch.where(hidden, 0.0, known) + float(sigmas[0]) * z
            x = pc_sample(score_fn, x, sigmas, generators, cfg.corrector_steps, cfg.snr, known=known,
                          known_mask=~hidden, on_step=step_cb)
        yield runs, x.cpu()
        done += len(runs) * cfg.steps


def sigma_grid(sde: VESDE, steps: int, t_start: float) -> torch.Tensor:
    """The ``steps + 1`` descending noise levels of a sampler run (float64): ``steps`` geometric levels from
    sigma(t_start) to sigma_min, then 0 (the final, noise-free predictor step)."""
    if steps < 1:
        raise InputError(f"sampler: steps must be >= 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise InputError(f"sampler: t_start must be in (0, 1], got {t_start}")
    start = float(sde.sigma(torch.tensor(t_start, dtype=torch.float64)))
    if start <= sde.sigma_min:
        raise InputError(f"sampler: sigma(t_start={t_start}) = {start:.4g} is not above sigma_min {sde.sigma_min:.4g}")
    levels = torch.logspace(math.log10(start), math.log10(sde.sigma_min), steps, dtype=torch.float64)
    if steps == 1:
        levels = torch.tensor([start], dtype=torch.float64)
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


def run_seed(seed: int, subject: str, run: int, tag: str) -> int:
    """A stable 63-bit seed for one run of one method on one subject, independent of set order and of the
    other runs (blake2b, not Python's salted ``hash``). A lesioned image and its lesion-free original share
    the subject name, so they are sampled with the same noise: their heatmaps differ by the lesion, not by
    the draw."""
    digest = hashlib.blake2b(f"{tag}:{seed}:{subject}:{run}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generators_for(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(generators), *shape) standard normal noise, one generator per batch element, on ``device``."""
    z = torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype) for g in generators])
    return z.to(device)


def _batch_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against ``x``."""
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def pc_sample(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generators: Sequence[torch.Generator],
    corrector_steps: int = 0,
    snr: float = 0.16,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the reverse VE-SDE from ``x`` (already at noise level ``sigmas[0]``) down the grid ``sigmas``
    (descending, last entry 0, e.g. from :func:`sigma_grid`); return the final, noise-free state.

    ``known`` (broadcastable to ``x``) with a bool ``known_mask`` (broadcastable to ``x``) switches on the
    known-region replacement; ``on_step(k)`` is called after each predictor step (k = 1..N) for progress.
    """
    if len(generators) != x.shape[0]:
        raise InputError(f"sampler: {len(generators)} generators for a batch of {x.shape[0]}")
    if (known is None) != (known_mask is None):
        raise InputError("sampler: known and known_mask go together")
    if sigmas.ndim != 1 or len(sigmas) < 2 or float(sigmas[-1]) != 0.0 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise InputError("sampler: sigmas must be strictly descending and end at 0")
    if corrector_steps < 0 or not snr > 0:
        raise InputError(f"sampler: need corrector_steps >= 0 and snr > 0, got {corrector_steps}, {snr}")
    device, dtype = x.device, x.dtype
    if known is not None:
        known = known.to(device=device, dtype=dtype)
        known_mask = known_mask.to(device=device, dtype=torch.bool)
    batch = x.shape[0]
    sample_shape = x.shape[1:]

    def noise() -> torch.Tensor:
        return draw_noise(generators, sample_shape, device, dtype)

    def replace(state: torch.Tensor, sigma: float) -> torch.Tensor:
        if known is None:
            return state
        target = known if sigma == 0.0 else known + sigma * noise()
        return torch.where(known_mask, target, state)

    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        level = torch.full((batch,), sigma, device=device, dtype=dtype)
        for _ in range(corrector_steps):
            grad = score_fn(x, level)
            z = noise()
            grad_norm = _batch_norm(grad)
            step = 2.0 * (snr * _batch_norm(z) / grad_norm.clamp_min(1e-30)) ** 2
            step = torch.where(grad_norm > 0, step, torch.zeros_like(step))  # a zero score: leave x alone
            x = x + step * grad + torch.sqrt(2.0 * step) * z
            x = replace(x, sigma)
        variance = sigma**2 - sigma_next**2
        x = x + variance * score_fn(x, level)
        if sigma_next > 0.0:
            x = x + math.sqrt(variance) * noise()
        x = replace(x, sigma_next)
        if on_step is not None:
            on_step(i + 1)
    return x


def model_score_fn(net: torch.nn.Module) -> ScoreFn:
    """The trained ScoreNet as a score function (its output is already the score: divided by sigma)."""

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return net(x, sigma)

    return score
