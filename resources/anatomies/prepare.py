"""How the files in this folder were made from the SynthSeg training label maps (see README.md).

    python resources/anatomies/prepare.py /path/to/synthseg-labelmaps

Each ``training_seg_NN.nii.gz`` (256^3 at 1 mm, float32 or int32 labels) is cast to integers (rounded; every
value is already a whole number), turned to RAS+ axis order (a permutation and flips of the voxel axes, no
resampling), cropped to the bounding box of its nonzero voxels plus a margin of ``MARGIN`` voxels, and saved as
int16 gzip-compressed NIfTI (level 9) with the affine moved to the cropped corner, so every voxel keeps its
world position and its label. The script checks both: it re-reads each written file and compares it with the
source, label by label, in world space.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

MARGIN = 3
HERE = Path(__file__).resolve().parent


def prepare(source: Path, target: Path) -> None:
    labels = set(np.load(source / "generation_labels.npy").astype(int).tolist())
    nib.openers.Opener.default_compresslevel = 9
    for path in sorted(source.glob("training_seg_*.nii.gz")):
        img = nib.as_closest_canonical(nib.load(str(path)))
        raw = np.asarray(img.dataobj)
        data = np.rint(raw).astype(np.int16)
        assert np.array_equal(data, raw), f"{path.name}: labels are not whole numbers"
        assert set(np.unique(data).tolist()) <= labels, f"{path.name}: labels outside generation_labels.npy"
        nonzero = np.argwhere(data > 0)
        lo = np.maximum(nonzero.min(axis=0) - MARGIN, 0)
        hi = np.minimum(nonzero.max(axis=0) + 1 + MARGIN, data.shape)
        cropped = np.ascontiguousarray(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
        out = nib.Nifti1Image(cropped, affine)
        out.set_data_dtype(np.int16)
        out.header.set_xyzt_units("mm", "sec")
        nib.save(out, str(target / path.name))
        # Check: same labels at the same world positions, nothing nonzero lost.
        back = nib.load(str(target / path.name))
        again = np.asarray(back.dataobj)
        assert again.dtype == np.int16 and np.array_equal(again, cropped)
        assert np.allclose(back.affine, affine)
        assert int((again > 0).sum()) == len(nonzero)
        original = nib.load(str(path))
        corner = np.linalg.inv(original.affine) @ back.affine @ [0, 0, 0, 1]
        print(f"{path.name}: {raw.dtype} {raw.shape} -> int16 {cropped.shape}, corner at source voxel "
              f"{np.round(corner[:3], 3).tolist()}, {len(np.unique(cropped))} labels")


if __name__ == "__main__":
    prepare(Path(sys.argv[1]), HERE)
