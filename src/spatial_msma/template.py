"""The MNI ICBM152 2009a symmetric template, read offline from the files shipped in the nilearn wheel.

Everything in template space (registration target, atlas brain mask, white-matter prior for lesion
placement, the synthetic cohort's source anatomy) comes from here, so no stage downloads anything.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


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
        img.header.set_xyzt_units("mm", "sec")
        img.set_data_dtype(data.dtype)
        return img


def _nilearn_data(name: str) -> Path:
    """Path of a file in nilearn's packaged data, found without importing nilearn (which pulls in sklearn, a
    slow import every job would pay)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is not installed; it ships the MNI template this workflow uses")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


@functools.cache
def load_template() -> Template:
    """Load the 1 mm template once per process.

    Maps are rescaled to [0, 1] by their maximum, as nilearn's ``load_mni152_*`` do. The brain mask is
    GM + WM > 0.5 with its holes (the ventricles) filled: tighter than nilearn's ``load_mni152_brain_mask``
    (T1 > 0.2, which also takes the CSF and dura around the brain: 1.88 L against 1.75 L). nilearn ships no
    CSF map: CSF is taken as nilearn's (T1 > 0.2) mask minus GM minus WM, clipped to [0, 1].
    """
    maps = {}
    affine = None
    for name in ("t1", "gm", "wm"):
        img = nib.load(str(_nilearn_data(f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")))
        data = np.asarray(img.dataobj, dtype=np.float32)
        maps[name] = data / max(float(data.max()), 1e-6)
        affine = img.affine.copy()
    head_tissue = maps["t1"] > 0.2
    csf = np.clip(head_tissue.astype(np.float32) - maps["gm"] - maps["wm"], 0.0, 1.0)
    # Closing first: the ventricles reach the outside through thin CSF channels, so filling holes alone
    # leaves 30 % of them out of the mask.
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(maps["gm"] + maps["wm"] > 0.5, iterations=3))
    return Template(t1=maps["t1"], gm=maps["gm"], wm=maps["wm"], csf=csf, brain=brain, affine=affine)


#: The template's name, as recorded in a model bundle.
TEMPLATE_NAME = "MNI ICBM152 2009a symmetric (nilearn)"


@functools.cache
def template_identity() -> dict[str, str]:
    """Name and SHA-256 of the template's maps (their voxel values and affine, not the file bytes): two
    installs that read the same template agree whatever their nilearn's compression, another template
    differs."""
    template = load_template()
    digest = hashlib.sha256()
    for data in (template.t1, template.gm, template.wm, template.affine):
        digest.update(np.ascontiguousarray(data, dtype=np.float32).tobytes())
    return {"name": TEMPLATE_NAME, "sha256": digest.hexdigest()}
