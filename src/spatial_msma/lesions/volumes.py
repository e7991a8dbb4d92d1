"""Names of the lesioned volumes: several independent lesion draws of one subject, each its own test volume.

A lesioned set holds ``draws`` volumes per subject, ``{subject}_draw-{k}`` (k from 1), all made from the same
lesion-free original with different lesion placements. They share the subject's brain mask and its
lesion-free heatmaps, and statistics resample them by subject (never draw by draw: draws of one subject are
not independent). Pure Python: the Snakefile reads it at parse time.
"""

from __future__ import annotations

DRAW_SEPARATOR = "_draw-"
#: File names of a lesioned volume in ``results/lesions/``: ``{volume}_image.nii.gz``, ``{volume}_mask.nii.gz``.
IMAGE_SUFFIX = "_image.nii.gz"
LESION_MASK_SUFFIX = "_mask.nii.gz"


def volume_id(subject: str, draw: int) -> str:
    """The id of lesion draw ``draw`` (1-based) of ``subject``, e.g. ``sub-01_draw-2``."""
    if int(draw) < 1:
        raise ValueError(f"lesion draw {draw!r}: draws count from 1")
    return f"{subject}{DRAW_SEPARATOR}{int(draw)}"


def volume_ids(subjects: list[str], draws: int) -> list[str]:
    """Every volume of a lesioned set: ``draws`` per subject, subject by subject."""
    return [volume_id(s, k) for s in subjects for k in range(1, draws + 1)]


def subject_of(image_id: str) -> str:
    """The subject an image id belongs to: the subject itself for a lesion-free image."""
    return image_id.rsplit(DRAW_SEPARATOR, 1)[0]
