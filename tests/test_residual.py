"""The reconstruction baselines' residual heatmaps: the raw and the standardised form, the reference fit
(known answers on estimators with a known residual), and its file round trip."""

import functools

import numpy as np
import pytest

from spatial_msma import io
from spatial_msma.baselines.residual import (
    ResidualDetector,
    fit_reference,
    raw_heatmap,
    read_reference,
    standardised_heatmap,
    write_reference,
)
from spatial_msma.detector import Case, read_case
from spatial_msma.io import InputError

SHAPE = (6, 5, 4)


class ShiftEstimator:
    """Estimates every image as itself minus a known per-voxel residual pattern plus the image's own noise."""

    label = "shift"
    steps_per_image = 1

    def __init__(self, residual_of):
        self.residual_of = residual_of

    def settings(self) -> str:
        return "known residuals"

    def estimate(self, case: Case) -> np.ndarray:
        return (case.image - self.residual_of(case.image_id)).astype(np.float32)


def _write(tmp_path, name, image):
    affine = np.eye(4)
    io.write_channels(image.astype(np.float32), affine, tmp_path / f"{name}.nii.gz")
    io.write_nifti(np.ones(SHAPE, bool), affine, tmp_path / f"{name}_brainmask.nii.gz")
    return tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_brainmask.nii.gz"


def test_reference_is_the_per_voxel_mean_and_floored_sd_of_the_residuals(tmp_path):
    rng = np.random.default_rng(0)
    residuals = {f"sub-{i}": rng.normal(0.3, 0.2, (2, *SHAPE)) for i in range(5)}
    for name in residuals:
        residuals[name][:, 0, 0, 0] = 0.5
    paths = [_write(tmp_path, name, rng.uniform(-1, 1, (2, *SHAPE))) for name in residuals]
    estimator = ShiftEstimator(lambda image_id: residuals[image_id])
    cases = [functools.partial(read_case, image, mask) for image, mask in paths]
    reference = fit_reference(estimator, cases, sd_floor=0.05)
    stack = np.stack(list(residuals.values()))
    np.testing.assert_allclose(reference["mean"], stack.mean(0), atol=1e-5)
    expected_sd = np.maximum(stack.std(0, ddof=1), 0.05)
    np.testing.assert_allclose(reference["sd"], expected_sd, atol=1e-5)
    assert (reference["sd"][:, 0, 0, 0] == np.float32(0.05)).all()
    assert int(reference["n_images"]) == 5
    write_reference(reference, tmp_path / "ref.npz")
    again = read_reference(tmp_path / "ref.npz")
    assert again["mean"].tobytes() == reference["mean"].tobytes()
    assert fit_reference(estimator, cases, 0.05)["sd"].tobytes() == reference["sd"].tobytes()
    with pytest.raises(InputError, match="at least 2"):
        fit_reference(estimator, cases[:1], 0.05)


def test_standardised_form_ranks_a_voxel_by_how_unusual_its_residual_is_there():
    """An edge voxel whose healthy residual is large and variable no longer outranks a lesion voxel whose
    residual is modest but far outside what healthy images show there; the raw form ranks them the other way."""
    image = np.zeros((1, *SHAPE), np.float32)
    estimate = image.copy()
    edge, lesion = (0, 1, 1, 1), (0, 4, 3, 2)
    estimate[edge] = -0.6  # residual 0.6 at the edge, typical there
    estimate[lesion] = -0.3  # residual 0.3 in smooth tissue, where healthy residuals are ~0
    reference = {"mean": np.zeros((1, *SHAPE), np.float32), "sd": np.full((1, *SHAPE), 0.05, np.float32)}
    reference["mean"][edge], reference["sd"][edge] = 0.5, 0.3
    raw = raw_heatmap(image, estimate)
    standardised = standardised_heatmap(image, estimate, reference)
    assert raw[edge[1:]] > raw[lesion[1:]]
    assert standardised[lesion[1:]] > standardised[edge[1:]]
    np.testing.assert_allclose(standardised[lesion[1:]], 0.3 / 0.05, rtol=1e-5)
    np.testing.assert_allclose(raw_heatmap(image, estimate, "squared")[edge[1:]], 0.36, rtol=1e-5)
    with pytest.raises(InputError, match="does not match"):
        standardised_heatmap(image[:, :3], estimate[:, :3], reference)


def test_detector_writes_both_forms_from_one_estimate_and_refuses_a_missing_reference(tmp_path):
    calls = []

    class Counting(ShiftEstimator):
        def estimate(self, case):
            calls.append(case.image_id)
            return super().estimate(case)

    estimator = Counting(lambda image_id: np.full((2, *SHAPE), 0.2))
    image, mask = _write(tmp_path, "sub-a", np.zeros((2, *SHAPE)))
    reference = {"mean": np.full((2, *SHAPE), 0.2, np.float32), "sd": np.full((2, *SHAPE), 0.1, np.float32)}
    maps = ResidualDetector(estimator, "standardised", reference).heatmaps(read_case(image, mask))
    assert calls == ["sub-a"]
    np.testing.assert_allclose(maps["raw"], 0.4, rtol=1e-5)
    np.testing.assert_allclose(maps["table"], 0.0, atol=1e-5)
    with pytest.raises(InputError, match="needs the residual reference"):
        ResidualDetector(estimator, "standardised")
    with pytest.raises(InputError, match="form must be one of"):
        ResidualDetector(estimator, "zscored", reference)
