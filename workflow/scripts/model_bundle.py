"""Snakemake entry point: the model bundle (everything applying Spatial-MSMA to new scans needs) -> one folder.

input: score_model, flow_model, thresholds, crop_box, registration_t1/_mask, output_t1/_mask (the template
grids); output: the bundle folder (results/bundle); params: settings (the method and the preprocess,
score_norms, flow heatmap and evaluation metrics settings), config (the run's whole config, for the manifest).
"""

from spatial_msma.apply.bundle import FILES, write_bundle
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
manifest = write_bundle({key: sm.input[key] for key in FILES}, sm.params.settings, sm.params.config, sm.output[0])
logger.info("model bundle %s: %d files, spatial_msma %s, torch %s, template %s", sm.output[0], len(manifest["files"]),
            manifest["versions"]["spatial_msma"], manifest["versions"]["torch"], manifest["template"]["name"])
