"""Preprocessing one subject: T2w -> T1w and T1w -> MNI registration, brain mask, resampling, intensity scaling.

All registration is antspyx. Brain extraction is atlas based, because nothing may be downloaded: the head is
registered rigidly to the (skull-stripped) MNI template, then affinely to a *head* template -- the MNI brain
inside a CSF rim, a skull and a scalp painted at fixed distances from its brain mask (:func:`head_template`),
so that skull and scalp meet their like instead of being pulled onto the brain's edge -- and the template brain
mask is then brought onto the subject by the inverse of a SyN warp, giving a subject-specific mask. Inputs that
are already skull-stripped, or come with their own masks, skip that part (config ``preprocess.brain_mask``).

Output lives on the template grid at the working voxel size (2 mm in the paper), so every subject shares one
voxel grid and the crop box of :mod:`spatial_msma.crop` applies to all.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ants
import numpy as np
from scipy import ndimage

from .io import InputError, atomic_path, load_nifti
from .template import load_template

BRAIN_MASK_MODES = ("atlas", "skullstripped", "supplied")
#: Seed of ANTs' random metric sampling (same subject, same bytes).
REGISTRATION_SEED = 1

# After an affine registration every brain is about template-sized (0.95-1.05 on the synthetic cohort); a
# failed registration gave 0.35.
MIN_VOLUME_RATIO, MAX_VOLUME_RATIO = 0.7, 1.4
# After registration the subject's T1w correlates with the template T1 inside the template brain (synthetic
# heads: 0.28-0.42, their bias fields and tissue contrasts differ from the template's); a volume of noise, which
# the SyN-warped mask passes as template-sized, correlates at 0.0. Below this, it is not a T1w head scan.
MIN_TEMPLATE_CORRELATION = 0.1
#: The head template's shells outside the brain mask: (outer distance in mm, T1 intensity on the template's
#: [0, 1] scale): CSF rim, skull, scalp -- the MNI-template cohort's synthetic head at its mean thicknesses.
HEAD_SHELLS = ((2.0, 0.15), (7.0, 0.05), (12.0, 0.75))


@dataclass(frozen=True)
class PreprocessSettings:
    """The ``preprocess`` config section."""

    voxel_mm: float = 2.0
    registration_mm: float = 2.0
    transform: str = "Affine"
    brain_mask: str = "atlas"
    mask_suffix: str = "_desc-brain_mask"
    percentiles: tuple[float, float] = (0.01, 99.9)

    @classmethod
    def from_config(cls, cfg: dict) -> PreprocessSettings:
        values = dict(cfg)
        if "percentiles" in values:
            values["percentiles"] = tuple(values["percentiles"])
        if values.get("brain_mask", "atlas") not in BRAIN_MASK_MODES:
            raise InputError(f"config preprocess.brain_mask: {values['brain_mask']!r} is not one of {BRAIN_MASK_MODES}")
        return cls(**values)


#: The template T1 and its brain mask on one grid, as ANTs images.
TemplateImages = tuple[ants.ANTsImage, ants.ANTsImage]


@functools.cache
def _template_images(voxel_mm: float) -> TemplateImages:
    """The template T1 and brain mask as ANTs images at ``voxel_mm`` (template field of view)."""
    template = load_template()
    t1 = ants.from_nibabel_nifti(template.image("t1"))
    mask = ants.from_nibabel_nifti(template.image("brain")).astype("float32")
    if voxel_mm != 1.0:
        t1 = ants.resample_image(t1, (voxel_mm,) * 3, use_voxels=False, interp_type=0)
        mask = ants.resample_image(mask, (voxel_mm,) * 3, use_voxels=False, interp_type=0)
    return t1, mask


def write_template_images(voxel_mm: float, t1_path: str | Path, mask_path: str | Path) -> None:
    """Write the template T1 and brain mask at ``voxel_mm`` once per run: building them (1 mm maps, hole
    filling, resampling) is a cost every one of the preprocessing jobs would otherwise pay (see
    benchmarks/README.md, Wall time)."""
    for image, path in zip(_template_images(float(voxel_mm)), (t1_path, mask_path), strict=True):
        with atomic_path(path) as tmp:
            ants.image_write(image, str(tmp))


def read_template_images(t1_path: str | Path, mask_path: str | Path) -> TemplateImages:
    """The pair written by :func:`write_template_images`."""
    return ants.image_read(str(t1_path)), ants.image_read(str(mask_path))


def head_template(t1: ants.ANTsImage, mask: ants.ANTsImage) -> ants.ANTsImage:
    """The brain template ``t1`` inside a painted head: voxels by their distance (mm) outside the brain ``mask``
    get the :data:`HEAD_SHELLS` intensities (CSF rim, skull, scalp), farther ones 0.

    Registering a whole head to the skull-stripped template alone let the affine fit pull skull and scalp
    onto the template brain's edge: real heads (the label-map cohort) came out ~15 % too small, the template
    brain reaching into their skulls (benchmarks/README.md, Registration of real heads). Made from the two
    template images on their own grid, so every caller (workflow, model bundle) has it without another file.
    """
    brain = mask.numpy() > 0.5
    distance = ndimage.distance_transform_edt(~brain, sampling=t1.spacing)
    head = t1.numpy().copy()
    inner = 0.0
    for outer, value in HEAD_SHELLS:
        head[(distance > inner) & (distance <= outer)] = value
        inner = outer
    head[distance > inner] = 0.0
    return t1.new_image_like(head.astype(np.float32))


def _read(path: str | Path, what: str) -> ants.ANTsImage:
    """Validate with nibabel (clear errors for truncation, NaNs, 4D), then hand the data to ANTs."""
    return ants.from_nibabel_nifti(load_nifti(path, ndim=3, what=what))


def _downsample(img: ants.ANTsImage, voxel_mm: float) -> ants.ANTsImage:
    if min(img.spacing) >= voxel_mm:
        return img
    return ants.resample_image(img, (voxel_mm,) * 3, use_voxels=False, interp_type=0)


def _register(fixed, moving, transform: str, workdir: str, tag: str, mask=None, initial=None,
              dense: bool = False) -> dict:
    """One antspyx registration. ``dense``: the linear stage's metric on every voxel instead of antspyx's random
    20 % (on the 4 mm grid the sampled metric let some real heads settle ~15 % off: benchmarks/README.md,
    Registration of real heads)."""
    # outprefix keeps ANTs' transform files in the job's own temp dir (it never deletes them itself).
    extra = {"aff_random_sampling_rate": 1.0} if dense else {}
    reg = ants.registration(
        fixed=fixed, moving=moving, type_of_transform=transform, mask=mask, initial_transform=initial,
        outprefix=str(Path(workdir) / f"{tag}_"), verbose=False, **extra,
    )
    return reg


def _scaling(data: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The in-brain (low, high) percentiles that :func:`_scale_intensities` maps to [-1, 1]."""
    lo, hi = np.percentile(data[mask], percentiles)
    if hi <= lo:
        raise InputError("intensity scaling: the image is constant inside the brain mask")
    return float(lo), float(hi)


def _scale_intensities(data: np.ndarray, mask: np.ndarray, scaling: tuple[float, float]) -> np.ndarray:
    """Map the in-brain (low, high) ``scaling`` to [-1, 1] and clip; outside the brain is -1."""
    lo, hi = scaling
    scaled = np.clip(2.0 * (data - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    return np.where(mask, scaled, -1.0).astype(np.float32)


@dataclass(frozen=True)
class Preprocessed:
    """One subject preprocessed, with what it takes to go back to its own scans.

    ``image`` (2, X, Y, Z) float32 [T1, T2] scaled to [-1, 1], ``brain`` (X, Y, Z) bool and ``affine``: the
    template grid at ``voxel_mm``. ``t1`` and ``t2`` are the native scans as read (ANTs images). The
    transforms are ANTs files in the caller's working folder, lists as :func:`ants.apply_transforms` takes
    them: ``to_template`` pulls the T1w onto the template (``+ t2_to_t1`` pulls the T2w);
    ``from_template`` (inverted where ``from_template_invert``) pulls a template-space volume onto the T1w,
    ``t2_from_t1`` (inverted where ``t2_from_t1_invert``) a T1w-space volume onto the T2w. ``scaling`` is
    the (low, high) intensity per channel that became (-1, 1).
    """

    image: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    t1: ants.ANTsImage
    t2: ants.ANTsImage
    to_template: list[str]
    t2_to_t1: list[str]
    from_template: list[str]
    from_template_invert: list[bool]
    t2_from_t1: list[str]
    t2_from_t1_invert: list[bool]
    scaling: tuple[tuple[float, float], tuple[float, float]]


def _inverse(reg: dict) -> tuple[list[str], list[bool]]:
    """A registration's inverse transform list and which of its entries ANTs must invert (the affines)."""
    inverse = list(reg["invtransforms"])
    return inverse, [path.endswith(".mat") for path in inverse]


def preprocess_subject(
    t1w: str | Path, t2w: str | Path, settings: PreprocessSettings, logger: logging.Logger | None = None,
    registration_template: TemplateImages | None = None, output_template: TemplateImages | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Register, skull-strip, resample and scale one subject.

    Returns ``(image (2, X, Y, Z) float32 [T1, T2], brain mask (X, Y, Z) bool, affine)`` on the template grid
    at ``settings.voxel_mm``. The templates at ``settings.registration_mm`` and ``settings.voxel_mm`` are
    built here unless given (the workflow reads them from :func:`write_template_images`' files).
    """
    with tempfile.TemporaryDirectory(prefix="smsma_reg_") as work:
        done = preprocess_in(work, t1w, t2w, settings, logger, registration_template, output_template)
    return done.image, done.brain, done.affine


def preprocess_in(
    workdir: str | Path, t1w: str | Path, t2w: str | Path, settings: PreprocessSettings,
    logger: logging.Logger | None = None, registration_template: TemplateImages | None = None,
    output_template: TemplateImages | None = None,
) -> Preprocessed:
    """:func:`preprocess_subject` keeping its transforms in ``workdir`` (see :class:`Preprocessed`): what
    applying a trained model needs to carry template-space results back onto the subject's own scans."""
    logger = logger or logging.getLogger(__name__)
    # ANTs samples metric points at random, seeded from the clock unless told otherwise: without a fixed seed
    # two runs of the same subject differed (measured: different crops, hence different lesions and tables).
    # This is antspyx's public switch; it also pins ITK to one thread and seeds numpy's global RNG.
    ants.config.set_ants_deterministic(True, seed_value=REGISTRATION_SEED)
    t1 = _read(t1w, "T1w")
    t2 = _read(t2w, "T2w")
    reg_template, reg_template_mask = registration_template or _template_images(settings.registration_mm)
    out_template, out_template_mask = output_template or _template_images(settings.voxel_mm)
    t1_small = _downsample(t1, settings.registration_mm)
    t2_small = _downsample(t2, settings.registration_mm)
    work = str(workdir)

    t2_reg = _register(t1_small, t2_small, "Rigid", work, "t2")
    t2_to_t1 = t2_reg["fwdtransforms"]
    if settings.brain_mask == "atlas":
        # Pass 1: whole head to the brain template, rigid only (an affine fit of a head to a brain can
        # shrink the head into the brain: seen on 1 of 49 synthetic subjects); pass 2: whole head to the
        # head template, with the configured transform.
        head = head_template(reg_template, reg_template_mask)
        first = _register(reg_template, t1_small, "Rigid", work, "head")
        brain_reg = _register(head, t1_small, settings.transform, work, "brain", initial=first["fwdtransforms"][0],
                              dense=True)
        to_template = brain_reg["fwdtransforms"]
        # Subject-specific mask: template mask pulled back through a SyN warp of the aligned head onto the head
        # template (brain edge onto brain edge; a subject masked by a dilated mask instead, against the brain
        # template, let the warp stretch the brain mask over the skull: measured in benchmarks/README.md).
        aligned = ants.apply_transforms(reg_template, t1_small, to_template)
        syn = _register(head, aligned, "SyNOnly", work, "syn", initial="Identity")
        mask_aligned = ants.apply_transforms(aligned, reg_template_mask, syn["invtransforms"],
                                             interpolator="linear")
        mask = ants.resample_image_to_target(mask_aligned, out_template, interp_type="linear")
    else:
        brain_reg = _register(reg_template, t1_small, settings.transform, work, "brain")
        to_template = brain_reg["fwdtransforms"]
        if settings.brain_mask == "skullstripped":
            source_mask = ants.threshold_image(t1, 1e-6, None)
        else:
            source_mask = _read(_supplied_mask_path(t1w, settings.mask_suffix), "brain mask")
        mask = ants.apply_transforms(out_template, source_mask, to_template, interpolator="linear")

    t1_out = ants.apply_transforms(out_template, t1, to_template, interpolator="linear")
    t2_out = ants.apply_transforms(out_template, t2, to_template + t2_to_t1, interpolator="linear")

    brain = mask.numpy() > 0.5
    template_brain = out_template_mask.numpy() > 0.5
    volume_ratio = brain.sum() / template_brain.sum()
    correlation = float(np.corrcoef(t1_out.numpy()[template_brain], out_template.numpy()[template_brain])[0, 1])
    logger.info("brain volume / template brain volume: %.3f; correlation with the template T1: %.3f", volume_ratio,
                correlation)
    if not MIN_VOLUME_RATIO < volume_ratio < MAX_VOLUME_RATIO:
        raise InputError(
            f"{t1w}: registration to the template failed (the brain mask is {volume_ratio:.2f} x the template's "
            "brain); check the image's orientation and field of view"
        )
    if not correlation >= MIN_TEMPLATE_CORRELATION:  # NaN too: a constant image
        raise InputError(
            f"{t1w}: registration to the template failed its quality check (correlation with the template T1 "
            f"inside the brain {correlation:.2f} < {MIN_TEMPLATE_CORRELATION}); is this a T1w scan of a head?"
        )
    channels = [c.numpy() for c in (t1_out, t2_out)]
    scaling = tuple(_scaling(c, brain, settings.percentiles) for c in channels)
    image = np.stack([_scale_intensities(c, brain, s) for c, s in zip(channels, scaling, strict=True)])
    affine = ants.to_nibabel_nifti(out_template).affine
    logger.info("%s: %d brain voxels at %.3g mm", Path(t1w).name, int(brain.sum()), settings.voxel_mm)
    return Preprocessed(image, brain, affine, t1, t2, to_template, t2_to_t1, *_inverse(brain_reg),
                        *_inverse(t2_reg), scaling)


def _supplied_mask_path(t1w: str | Path, suffix: str) -> Path:
    """``sub-X_..._T1w.nii.gz`` -> ``sub-X_..._desc-brain_mask.nii.gz`` next to it (config preprocess.mask_suffix)."""
    t1w = Path(t1w)
    ext = ".nii.gz" if t1w.name.endswith(".nii.gz") else ".nii"
    return t1w.with_name(t1w.name[: -len(ext)].removesuffix("_T1w") + suffix + ext)
