"""Apply a model bundle to one subject's own T1w/T2w: lesion maps and a per-lesion table in its native space.

The steps are the training run's own functions, in its order: preprocessing (registration to the template,
skull stripping, resampling, scaling: :func:`~spatial_msma.preprocess.preprocess_in`), the crop box, the
score-norm cache, the flow heatmap (:class:`~spatial_msma.flow.heatmap.FlowDetector`), the evaluated region,
the deployable threshold and the post-processing (:func:`~spatial_msma.evaluation.postprocess.segment`);
the segmentation's lesions are labelled there (the evaluation's component connectivity), and the inverted
registration carries the heatmap and the lesion labels onto the T1w grid (:mod:`.native`): one lesion on the
template grid stays one lesion, with one row in the per-lesion table, however the finer grid resamples it.

A subject whose input is unusable (no T2w, a 4D or NaN or unreadable file, a registration that fails its
quality check) is refused: its status file says why, and the other subjects are not affected.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ants
import nibabel as nib
import numpy as np

from spatial_msma import io
from spatial_msma.apply.bundle import Bundle, open_bundle
from spatial_msma.apply.native import carry_labels, lesion_table, overlay_figure, refusal_figure, to_native
from spatial_msma.crop import apply_crop, cropped_affine
from spatial_msma.detector import masked, read_case
from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.pipeline import deployable_threshold, load_region_case, load_thresholds
from spatial_msma.evaluation.postprocess import label_components, rim_for, segment
from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.heatmap import DensityModel, FlowDetector, load_density_model
from spatial_msma.io import InputError
from spatial_msma.lesions.volumes import subject_of
from spatial_msma.preprocess import (
    Preprocessed,
    PreprocessSettings,
    TemplateImages,
    preprocess_in,
    read_template_images,
)
from spatial_msma.progress import Progress
from spatial_msma.protocols import protocol_name
from spatial_msma.score.cache import read_manifest
from spatial_msma.score.network import load_score_model
from spatial_msma.score.norms import NormsConfig, compute_score_norm_cache
from spatial_msma.training import resolve_device

#: What :func:`apply_subject` logs as progress, in order.
STEPS = ("read and register", "score norms and heatmap", "threshold", "native space", "table and figure")


def outputs(out_dir: str | os.PathLike, subject: str) -> dict[str, Path]:
    """The files of one subject under ``out_dir`` (``{subject}_*``; intermediate template-space files in
    ``template/``). ``mask`` is the binary lesion mask, ``labels`` the same voxels holding their lesion's
    number in ``table`` (an integer image, 0 outside the lesions)."""
    root = Path(out_dir)
    names = {"status": "status.json", "overlay": "overlay.png", "heatmap": "heatmap.nii.gz",
             "mask": "lesions.nii.gz", "labels": "lesion_labels.nii.gz", "table": "lesions.csv"}
    return {key: root / f"{subject}_{name}" for key, name in names.items()} | {"template": root / "template"}


@dataclass(frozen=True)
class ApplyModel:
    """A checked bundle, ready to apply: settings, templates, crop box, the flow and its threshold."""

    bundle: Bundle
    preprocess: PreprocessSettings
    norms: NormsConfig
    evaluation: EvaluationConfig
    box: dict[str, list[int]]
    registration_template: TemplateImages
    output_template: TemplateImages
    flow: DensityModel
    flow_training: FlowConfig
    scoring: FlowConfig
    protocol: str
    threshold: float

    @classmethod
    def load(cls, bundle_path: str | os.PathLike, fpr: float, device: str = "auto") -> ApplyModel:
        """Open the bundle (:func:`~spatial_msma.apply.bundle.open_bundle`), pick the threshold of the
        healthy-voxel FPR ``fpr``, and check that the models fit the bundle's template grid."""
        bundle = open_bundle(bundle_path)
        s = bundle.settings
        evaluation = EvaluationConfig.from_dict(s["evaluation"])
        thresholds_path = bundle.file("thresholds")
        protocol = protocol_name(fpr)
        thresholds = load_thresholds(thresholds_path, s["method"])
        if thresholds.get("config") != evaluation.to_dict():
            raise InputError(f"model bundle {bundle.path}: its thresholds were fitted with other evaluation settings "
                             "(evaluated region, post-processing) than its settings.json holds")
        threshold = deployable_threshold(thresholds, protocol, thresholds_path)
        norms = NormsConfig.from_dict({**s["score_norms"], "device": device})
        model, train_cfg = load_density_model(bundle.file("flow_model"))
        scoring = FlowConfig.from_dict({**s["flow"], "device": device})
        box = json.loads(bundle.file("crop_box").read_text())
        output_template = read_template_images(bundle.file("output_t1"), bundle.file("output_mask"))
        grid = nib.load(str(bundle.file("output_t1")))
        sigmas = load_score_model(bundle.file("score_model")).sde.levels(norms.n_levels, norms.t_min, norms.t_max)
        model.meta.check_compatible(sigmas, tuple(box["shape"]), cropped_affine(grid.affine, box),
                                    f"model bundle {bundle.path}: template grid, crop box and score levels")
        return cls(bundle, PreprocessSettings.from_config(s["preprocess"]), norms, evaluation, box,
                   read_template_images(bundle.file("registration_t1"), bundle.file("registration_mask")),
                   output_template, model, train_cfg, scoring, protocol, threshold)

    def template_heatmap(self, prep: Preprocessed, subject: str, work: Path,
                         logger: logging.Logger) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crop, score norms and flow heatmap on the template grid, written to ``work`` under the training
        run's file names; returns (heatmap, brain mask, cropped affine)."""
        affine = cropped_affine(prep.affine, self.box)
        # the run's file names: a lesioned volume {subject}_draw-{k} goes with its subject's brain mask
        image_path, mask_path = work / f"{subject}.nii.gz", work / f"{subject_of(subject)}_brainmask.nii.gz"
        io.write_channels(apply_crop(prep.image, self.box, fill=-1.0), affine, image_path)
        io.write_nifti(apply_crop(prep.brain, self.box, fill=False), affine, mask_path)
        manifest = work / "score_norms" / "manifest.tsv"
        compute_score_norm_cache(self.bundle.file("score_model"), [image_path], [mask_path], manifest, [subject],
                                 self.norms, logger)
        detector = FlowDetector(self.flow, self.flow_training, self.scoring, read_manifest(manifest),
                                resolve_device(self.scoring.device))
        case = read_case(image_path, mask_path)
        heat = masked(detector.heatmap(case), case, detector.label)
        io.write_nifti(heat, affine, work / f"{subject}_heatmap.nii.gz")
        return heat, case.brain, affine

    def segment(self, subject: str, work: Path) -> np.ndarray:
        """The deployable segmentation of the template-space heatmap in ``work``: the evaluated region (the
        eroded brain), the bundle's threshold, the post-processing; the evaluation's own functions."""
        case = load_region_case(subject, work / f"{subject}_heatmap.nii.gz",
                                work / f"{subject_of(subject)}_brainmask.nii.gz", self.evaluation)
        mask = segment(case.heatmap, case.brain, self.threshold, self.evaluation, rim_for(case.brain, self.evaluation))
        io.write_nifti(mask, case.affine, work / f"{subject}_lesions.nii.gz")
        return mask


def apply_subject(model: ApplyModel, subject: str, t1w: str, t2w: str, out_dir: str | os.PathLike,
                  logger: logging.Logger | None = None) -> dict[str, Any]:
    """Apply ``model`` to one subject; writes its files (:func:`outputs`) and returns its status row.

    A bad input is not an error here: the subject is refused (status ``refused`` with the reason, the overlay
    slot shows the message) and the function returns normally, so a folder of scans is never stopped by one.
    """
    logger = logger or logging.getLogger("spatial_msma")
    files = outputs(out_dir, subject)
    status: dict[str, Any] = {"subject": subject, "t1w": t1w, "t2w": t2w, "protocol": model.protocol,
                              "threshold": model.threshold}
    start = time.monotonic()
    try:
        status |= _apply(model, subject, t1w, t2w, files, logger)
        status["status"], status["reason"] = "ok", ""
    except InputError as err:
        logger.error("%s refused: %s", subject, err)
        for key in ("heatmap", "mask", "labels", "table"):
            files[key].unlink(missing_ok=True)
        shutil.rmtree(files["template"], ignore_errors=True)
        refusal_figure(subject, str(err), files["overlay"])
        status |= {"status": "refused", "reason": str(err)}
    status["seconds"] = round(time.monotonic() - start, 1)
    io.write_json(status, files["status"])
    return status


def _apply(model: ApplyModel, subject: str, t1w: str, t2w: str, files: dict[str, Path],
           logger: logging.Logger) -> dict[str, Any]:
    if not t1w:
        raise InputError(f"{subject}: no T1w scan listed")
    if not t2w:
        raise InputError(f"{subject}: no T2w scan; this model was trained on T1w + T2w and needs both")
    progress = Progress(len(STEPS), f"apply {subject}", logger, every_s=0.0)

    def done(step: str) -> None:
        progress.update(STEPS.index(step) + 1)
        logger.info("%s: %s done", subject, step)

    template_dir = files["template"]
    template_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smsma_apply_") as work:
        prep = preprocess_in(work, t1w, t2w, model.preprocess, logger, model.registration_template,
                             model.output_template)
        done("read and register")
        heat, case_brain, affine = model.template_heatmap(prep, subject, template_dir, logger)
        done("score norms and heatmap")
        segmentation = model.segment(subject, template_dir)
        template_labels, n_template = label_components(segmentation, model.evaluation.component_connectivity_metrics)
        done("threshold")
        native_affine = io.load_nifti(t1w, ndim=3, what="T1w").affine
        native_brain = to_native(case_brain, affine, prep.t1, prep.from_template, prep.from_template_invert,
                                 "genericLabel") > 0.5
        native_heat = to_native(heat, affine, prep.t1, prep.from_template, prep.from_template_invert, "linear")
        native_heat = np.where(native_brain, native_heat, 0.0).astype(np.float32)  # 0 outside the brain, as on the grid
        native_labels = carry_labels(template_labels, affine, prep.t1, prep.from_template, prep.from_template_invert)
        # the T2w on the T1w grid (the rigid T2w -> T1w registration), for the overlay
        t2_on_t1 = ants.apply_transforms(prep.t1, prep.t2, prep.t2_to_t1, interpolator="linear").numpy()
        done("native space")
    table, native_labels = lesion_table(native_labels, native_heat, native_affine, model.threshold, model.protocol)
    lost = n_template - len(table)
    if lost:  # dropped: a row needs voxels for its volume, centroid and scores
        logger.warning("%s: %d of the %d lesions found on the template grid have no voxel on the T1w grid (outside "
                       "its field of view, or thinner than its voxels); they are not in the mask or the table",
                       subject, lost, n_template)
    io.write_nifti(native_heat, native_affine, files["heatmap"])
    io.write_nifti(native_labels > 0, native_affine, files["mask"])
    io.write_nifti(native_labels, native_affine, files["labels"])
    io.write_table(table, files["table"])
    title = (f"{subject}: {len(table)} lesion(s), {table['volume_mm3'].sum() / 1000:.2f} mL at the "
             f"{model.protocol} threshold ({model.threshold:.4g})")
    overlay_figure(prep.t1.numpy(), t2_on_t1, native_heat, native_labels, native_affine, title, files["overlay"])
    done("table and figure")
    logger.info("%s", title)
    return {"n_lesions": len(table), "n_lesions_lost": lost,
            "lesion_volume_ml": round(float(table["volume_mm3"].sum()) / 1000, 3),
            "largest_lesion_mm3": float(table["volume_mm3"].max()) if len(table) else 0.0,
            "peak_score": float(table["peak_score"].max()) if len(table) else None}
