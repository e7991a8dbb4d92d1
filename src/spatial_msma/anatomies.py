"""The 20 real head anatomies the built-in cohort can be made from (``synthetic.anatomy: labelmaps``).

The label maps are SynthSeg's training label maps (BBillot/SynthSeg, commit 66342c1, Apache-2.0), shipped in
``resources/anatomies/`` (its README says what was done to them): 1 mm, one FreeSurfer-numbered label per
voxel, brain structures plus extra-cerebral tissue (skull, scalp, eyes, ...). This module finds and reads them,
holds the per-tissue intensity model the generator paints them with (:data:`TISSUES`) and the label groups
the registration check compares with the template's tissue maps (:data:`DICE_TISSUES`).

Labels 25/57 (FreeSurfer's "Left/Right-Lesion", up to ~45 mL of white-matter hyperintensity in some of these
adult anatomies) are painted as white matter: the built-in cohort is the *healthy* cohort the detectors learn
normal anatomy from, and lesions are added later, where the evaluation knows them. They count as white matter
in the registration check as well.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: Where the label maps live: ``resources/anatomies`` of the checkout this package is in (the package is run
#: from its checkout: ``pip install -e .``, or Snakemake's jobs, which import it from ``src/``).
ANATOMY_DIR = Path(__file__).resolve().parents[2] / "resources" / "anatomies"
ANATOMY_GLOB = "training_seg_*.nii.gz"


@dataclass(frozen=True)
class Tissue:
    """One row of the intensity model: labels sharing a tissue, and its mean T1w and T2w intensity (white
    matter = 1 on T1w, CSF = 1 on T2w, as the MNI-template cohort's scale)."""

    labels: tuple[int, ...]
    t1: float
    t2: float


#: The per-tissue intensity model (means before each subject's contrast jitter). Ordering follows adult
#: 3 T T1w (MPRAGE) and T2w (turbo spin echo) contrast: CSF dark on T1w and bright on T2w, white matter bright
#: on T1w and dark on T2w, cortex between; deep grey matter close to white matter on T1w (pallidum and
#: thalamus nearest, caudate farthest), darker than cortex on T2w; skull (cortical bone) dark on both;
#: scalp fat bright on T1w; fatty bone marrow bright-ish on T1w; vitreous like CSF; flow voids (dural
#: sinuses, neck vessels) dark on both. The extra-cerebral 5xx classes are SynthSeg's and unnamed in its
#: repository; the names here are what they are by position (checked on slices: 515 the calvarium, 511 the
#: outer skin layer, 506 the two globes, 512 the cord below the brainstem, ...).
TISSUES: dict[str, Tissue] = {
    "cerebral white matter (and lesion 25/57 as white matter)": Tissue((2, 41, 25, 57), 1.00, 0.36),
    "cerebellar white matter, optic chiasm": Tissue((7, 46, 85), 0.97, 0.38),
    "brainstem": Tissue((16,), 0.92, 0.42),
    "ventral diencephalon": Tissue((28, 60), 0.88, 0.42),
    "pallidum": Tissue((13, 52), 0.90, 0.38),
    "thalamus": Tissue((10, 49), 0.84, 0.45),
    "putamen": Tissue((12, 51), 0.75, 0.48),
    "caudate, accumbens": Tissue((11, 50, 26, 58), 0.70, 0.54),
    "cerebral cortex": Tissue((3, 42), 0.62, 0.60),
    "hippocampus, amygdala": Tissue((17, 53, 18, 54), 0.60, 0.64),
    "cerebellar cortex": Tissue((8, 47), 0.60, 0.60),
    "CSF, ventricles": Tissue((4, 43, 5, 44, 14, 15, 72, 24), 0.15, 1.00),
    "choroid plexus (136/137/163/164, inside the lateral ventricles)": Tissue((136, 137, 163, 164), 0.45, 0.75),
    "vessel (FreeSurfer 30/62)": Tissue((30, 62), 0.55, 0.40),
    "skull, cortical bone (515)": Tissue((515,), 0.06, 0.05),
    "bone marrow of skull base and vertebrae (516)": Tissue((516,), 0.55, 0.35),
    "skin and subcutaneous fat (511)": Tissue((511,), 0.88, 0.62),
    "muscle and other soft tissue of scalp, face, neck (507)": Tissue((507,), 0.50, 0.32),
    "eyes, vitreous (506)": Tissue((506,), 0.12, 0.95),
    "optic nerves, eye muscles (508)": Tissue((508,), 0.50, 0.35),
    "nasal mucosa (509)": Tissue((509,), 0.45, 0.70),
    "spinal cord (512)": Tissue((512,), 0.85, 0.45),
    "dural venous sinuses, flow void (514)": Tissue((514,), 0.25, 0.15),
    "neck vessels, flow void (502)": Tissue((502,), 0.25, 0.20),
    "small structure near the optic nerves (530)": Tissue((530,), 0.50, 0.45),
}
#: Every brain label (what the anatomy's brain centre is computed from).
BRAIN_LABELS = (2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 25, 26, 28, 30, 41, 42, 43, 44, 46, 47,
                49, 50, 51, 52, 53, 54, 57, 58, 60, 62, 72, 85)
#: Label groups of the registration check, compared with the template's tissue classes
#: (:mod:`spatial_msma.registration_qc`): white matter (cerebral and cerebellar white matter, brainstem,
#: ventral diencephalon, optic chiasm, lesion labels), grey matter (cerebral and cerebellar cortex and the deep
#: grey nuclei: thalamus, caudate, putamen, pallidum, accumbens, hippocampus, amygdala), ventricles (the
#: lateral ventricles: what the template's CSF map can be told apart for; see registration_qc).
DICE_TISSUES: dict[str, tuple[int, ...]] = {
    "wm": (2, 41, 7, 46, 16, 28, 60, 25, 57, 85),
    "gm": (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 26, 58, 17, 53, 18, 54),
    "ventricles": (4, 43),
}
MAX_LABEL = 531


def intensity_tables() -> tuple[list[str], np.ndarray]:
    """Tissue names and their ``(n_tissues, 2)`` (T1w, T2w) means, in :data:`TISSUES` order."""
    return list(TISSUES), np.array([(t.t1, t.t2) for t in TISSUES.values()], dtype=np.float64)


@functools.cache
def tissue_index() -> np.ndarray:
    """``label -> row of TISSUES + 1`` (0 = background, no tissue), a lookup array over every label value."""
    index = np.zeros(MAX_LABEL, np.int64)
    for row, tissue in enumerate(TISSUES.values()):
        index[list(tissue.labels)] = row + 1
    return index


def anatomy_dir(folder: str | Path | None = None) -> Path:
    """The label-map folder (default :data:`ANATOMY_DIR`), checked to hold the maps."""
    folder = Path(folder) if folder is not None else ANATOMY_DIR
    if not any(folder.glob(ANATOMY_GLOB)):
        raise FileNotFoundError(
            f"{folder}: no {ANATOMY_GLOB} label maps; they ship in the repository's resources/anatomies/ "
            "(install this package from its checkout, `pip install -e .`, or run the workflow from it)")
    return folder


def anatomy_files(folder: str | Path | None = None) -> list[Path]:
    return sorted(anatomy_dir(folder).glob(ANATOMY_GLOB))


def anatomy_name(path: str | Path) -> str:
    """``training_seg_07.nii.gz`` -> ``seg07``: the anatomy's name in participants.tsv."""
    return "seg" + Path(path).name.removeprefix("training_seg_").removesuffix(".nii.gz")


@dataclass(frozen=True)
class Anatomy:
    """One label map: int16 labels on its RAS+ 1 mm grid, the grid's corner (world mm) and voxel size, and the
    world position of the brain's centre (centroid of the brain labels)."""

    name: str
    labels: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    centre: np.ndarray


@functools.cache
def load_anatomy(path: str) -> Anatomy:
    """Read one label map once per process (int16, ~16 MB each). The shipped maps are axis-aligned (RAS+, a
    diagonal affine); anything else is refused rather than sampled wrongly."""
    img = nib.load(path)
    labels = np.asarray(img.dataobj)
    if labels.dtype.kind == "f":
        labels = np.rint(labels)
    labels = labels.astype(np.int16)
    affine = img.affine
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))) or (np.diag(affine)[:3] <= 0).any():
        raise ValueError(f"{path}: label map must be RAS+ axis-aligned (see resources/anatomies/prepare.py)")
    spacing = np.diag(affine)[:3].astype(np.float64)
    origin = affine[:3, 3].astype(np.float64)
    brain = np.isin(labels, BRAIN_LABELS)
    centre = np.argwhere(brain).mean(axis=0) * spacing + origin
    labels.setflags(write=False)
    return Anatomy(anatomy_name(path), labels, origin, spacing, centre)
