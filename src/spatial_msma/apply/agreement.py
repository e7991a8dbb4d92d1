"""Is the native-space path right? The lesioned test volumes carried into their subjects' own scans, applied
there, and their native lesion masks scored against the template-space evaluation.

Carrying a lesioned test volume back: its subject's clean scans are registered again (the preprocessing is
deterministic, so the transforms are the training run's), the lesion's intensity change (lesioned minus clean
cropped image, in the scaled units) is converted to each scan's intensity units with the subject's scaling
(``(high - low) / 2`` per channel) and pulled onto the T1w and the T2w through the inverted transforms, then
added to the scans. The ground truth is the template evaluation's own reference (the evaluated region, small
components left out: :func:`~spatial_msma.evaluation.postprocess.prepare_reference`), its lesions labelled on the
template grid as the evaluation counts them (``component_connectivity_metrics``) and the label image carried onto
the T1w grid with ``genericLabel`` (:func:`~spatial_msma.apply.native.carry_labels`). The apply path then treats
those scans as any new patient's: registration, scaling, score norms, heatmap, threshold and post-processing all
run again, with the lesions present, and its lesions are labelled on the template grid and carried the same way.

Counting is by those ids (:func:`~spatial_msma.evaluation.metrics.component_counts` with ``labelled=True``): a
reference lesion is found if any of its native voxels is predicted, a predicted lesion is a true positive if
any of its voxels is a reference voxel. Relabelling the carried masks on the 1 mm T1w grid would count other
lesions than the template-space evaluation does: lesions whose 4 mm voxels touch only at an edge or a corner
come apart when resampled (measured on the default run: 413 reference lesions against the evaluation's 323).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_msma import io
from spatial_msma.apply.native import carry_labels, to_native
from spatial_msma.crop import apply_crop, cropped_affine
from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import component_counts
from spatial_msma.evaluation.postprocess import erode, label_components, prepare_reference, rim_for
from spatial_msma.lesions.volumes import subject_of
from spatial_msma.preprocess import PreprocessSettings, TemplateImages, preprocess_in

#: The issue's bar: native component TPR and PPV within this of the template-space figures.
TOLERANCE = 0.05


def native_lesioned_scans(
    t1w: str | os.PathLike, t2w: str | os.PathLike, cropped_image: str | os.PathLike,
    lesioned_image: str | os.PathLike, lesion_mask: str | os.PathLike, brain_mask: str | os.PathLike,
    box: dict[str, list[int]], settings: PreprocessSettings, templates: tuple[TemplateImages, TemplateImages],
    cfg: EvaluationConfig, out: Mapping[str, str | os.PathLike], logger: logging.Logger | None = None,
) -> None:
    """Write one lesioned test volume in its subject's native space: ``out["t1w"]``, ``out["t2w"]`` (the scans
    with the lesions added) and ``out["reference"]`` (the scored lesions on the T1w grid, an integer label image:
    each voxel holds the id of its lesion as labelled on the template grid)."""
    logger = logger or logging.getLogger("spatial_msma")
    clean, affine = io.read_channels(cropped_image)
    lesioned, _ = io.read_channels(lesioned_image)
    lesion, _ = io.read_mask(lesion_mask)
    brain, _ = io.read_mask(brain_mask)
    with tempfile.TemporaryDirectory(prefix="smsma_native_") as work:
        prep = preprocess_in(work, t1w, t2w, settings, logger, *templates)
        again = apply_crop(prep.image, box, fill=-1.0)
        if not np.allclose(cropped_affine(prep.affine, box), affine, atol=1e-3):
            raise io.InputError(f"{cropped_image}: not on the grid of this preprocessing and crop box")
        logger.info("preprocessing again: max |difference| to the run's cropped image %.3g",
                    float(np.abs(again - clean).max()))
        change = [(lesioned[c] - clean[c]) * (hi - lo) / 2.0 for c, (lo, hi) in enumerate(prep.scaling)]
        t1 = prep.t1.numpy() + to_native(change[0], affine, prep.t1, prep.from_template,
                                         prep.from_template_invert, "linear")
        t2 = prep.t2.numpy() + to_native(change[1], affine, prep.t2, prep.t2_from_t1 + prep.from_template,
                                         prep.t2_from_t1_invert + prep.from_template_invert, "linear")
        region = erode(brain, cfg.erosion_radius)
        reference, n_lesions = label_components(prepare_reference(lesion, region, cfg, rim_for(region, cfg)),
                                                cfg.component_connectivity_metrics)
        native_reference = carry_labels(reference, affine, prep.t1, prep.from_template, prep.from_template_invert)
    io.write_nifti(t1, io.load_nifti(t1w, what="T1w").affine, out["t1w"])
    io.write_nifti(t2, io.load_nifti(t2w, what="T2w").affine, out["t2w"])
    io.write_nifti(native_reference, io.load_nifti(t1w, what="T1w").affine, out["reference"])
    logger.info("lesions carried into %s: %d reference lesions (%d voxels) on the template grid, %d (%d voxels) "
                "on the T1w grid", t1w, n_lesions, int((reference > 0).sum()),
                len(np.setdiff1d(np.unique(native_reference), [0])), int((native_reference > 0).sum()))


def agreement_table(volumes: Sequence[str], predictions: Sequence[str | os.PathLike],
                    references: Sequence[str | os.PathLike], template_metrics: str | os.PathLike) -> pd.DataFrame:
    """Per lesioned volume: component TPR/PPV of the native prediction against the native reference (both
    label images, counted by their template-grid lesion ids), beside the template-space evaluation's figures
    of the same volume (its metrics CSV of the same protocol).

    A volume whose apply was refused has no prediction (``""``): its native columns stay empty.
    """
    template = pd.read_csv(template_metrics).set_index("volume")
    rows = []
    for volume, prediction, reference in zip(volumes, predictions, references, strict=True):
        if volume not in template.index:
            raise io.InputError(f"{template_metrics}: no row for {volume}")
        row = {"volume": volume, "subject": subject_of(volume),
               "template_tpr": template.loc[volume, "tpr"], "template_ppv": template.loc[volume, "ppv"],
               "template_gt": template.loc[volume, "n_gt_components"],
               "template_pred": template.loc[volume, "n_pred_components"]}
        if prediction:
            truth, affine = io.read_labels(reference)
            predicted, _ = io.read_labels(prediction)
            counts = component_counts(truth, predicted, float(abs(np.linalg.det(affine[:3, :3]))), labelled=True)
            row |= {"native_tpr": counts.tpr, "native_ppv": counts.ppv,
                    "native_gt": counts.gt_detected + counts.gt_missed,
                    "native_pred": counts.pred_tp + counts.pred_fp}
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_summary(table: pd.DataFrame, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Mean TPR and PPV over the volumes applied in native space, native against template, and whether each
    difference is within ``tolerance``."""
    applied = table.dropna(subset=["native_tpr"])
    rows = []
    for metric in ("tpr", "ppv"):
        native = float(applied[f"native_{metric}"].mean())
        template = float(applied[f"template_{metric}"].mean())
        rows.append({"metric": metric, "native": native, "template": template, "difference": native - template,
                     "tolerance": tolerance, "within_tolerance": bool(abs(native - template) <= tolerance),
                     "n_volumes": len(applied), "n_refused": len(table) - len(applied)})
    return pd.DataFrame(rows)


def write_agreement(volumes: Sequence[str], status_files: Sequence[str | os.PathLike],
                    references: Sequence[str | os.PathLike], template_metrics: str | os.PathLike,
                    out_table: str | os.PathLike, out_summary: str | os.PathLike,
                    logger: logging.Logger | None = None) -> pd.DataFrame:
    """The agreement check's files: per-volume table and summary. The native prediction of a volume is the
    lesion label image its apply job wrote beside its status file (none if it was refused)."""
    logger = logger or logging.getLogger("spatial_msma")
    predictions = []
    for volume, status in zip(volumes, io.as_path_list(status_files), strict=True):
        mask = Path(status).with_name(f"{volume}_lesion_labels.nii.gz")
        predictions.append(str(mask) if mask.exists() else "")
    table = agreement_table(volumes, predictions, references, template_metrics)
    summary = agreement_summary(table)
    io.write_table(table, out_table)
    io.write_table(summary, out_summary)
    for row in summary.itertuples():
        logger.info("component %s: native %.3f, template %.3f, difference %+.3f (%s %.2f) over %d volumes",
                    row.metric.upper(), row.native, row.template, row.difference,
                    "within" if row.within_tolerance else "NOT within", row.tolerance, row.n_volumes)
    return summary
