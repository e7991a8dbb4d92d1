"""MS-MIST-style lesion simulation in template space, at a finer grid than the working one.

The paper made its test set with MS-MIST (the 3D Slicer MSLesionSimulator), which cannot be installed
here, so this package re-implements its model with a seeded generator. Its modules, in the order a subject
goes through them:

* :mod:`~spatial_msma.lesions.config`: the ``lesions`` config section as a frozen dataclass.
* :mod:`~spatial_msma.lesions.size_bins`: MS-MIST's lesion-volume bins, shared with the evaluation.
* :mod:`~spatial_msma.lesions.grids`: the fine grid lesions are made on and the way back to the working grid.
* :mod:`~spatial_msma.lesions.shapes`: what a lesion looks like: an irregular blob, or a user's lesion mask.
* :mod:`~spatial_msma.lesions.placement`: where lesions go: white matter, near the ventricles, apart.
* :mod:`~spatial_msma.lesions.intensity`: MS-MIST's contrast model and the paper's x1.5 enhancement.
* :mod:`~spatial_msma.lesions.simulate`: one subject, from arrays or files, and its lesion table.
* :mod:`~spatial_msma.lesions.report`: the summary table and figure over the lesioned subjects.

The model is described in :mod:`~spatial_msma.lesions.simulate`. Every importer of the package runs this
file (the evaluation too, for the size bins), so it holds neither code nor the model's description.
"""
