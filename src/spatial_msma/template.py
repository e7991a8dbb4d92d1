"""The MNI ICBM152 2009a symmetric template, read offline from the files shipped in the nilearn wheel.

Everything in template space (registration target, atlas brain mask, white-matter prior for lesion
placement, the synthetic cohort's source anatomy) comes from here, so no stage downloads anything.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class Template:
    """Template T1 (scaled to [0, 1]) and tissue probability maps on the 1 mm template grid."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool
    affine: np.ndarray

    def image(self, name: str) -> nib.Nifti1Image:
        """One map as a float32 NIfTI image on the template grid (brain mask as uint8)."""
        data = getattr(self, name)
        data = data.astype(np.uint8) if data.dtype == bool else data.astype(np.float32)
        img = nib.Nifti1Image(data, self.affine)
        img.set_data_dtype(data.dtype)
        return img


@functools.cache
def load_template() -> Template:
    """Load the 1 mm template once per process.

    nilearn ships no CSF map: CSF is taken as brain minus GM minus WM (clipped to [0, 1]). The brain
    mask is nilearn's (template T1 > 0.2 of its range) closed with the tissue maps, which keeps the
    ventricles inside it.
    """
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    t1 /= max(float(t1.max()), 1e-6)
    gm /= max(float(gm.max()), 1e-6)
    wm /= max(float(wm.max()), 1e-6)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    brain = np.asarray(mask_img.dataobj) > 0
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    return Template(t1=t1, gm=gm, wm=wm, csf=csf, brain=brain, affine=t1_img.affine.copy())
