"""Snakemake entry point: check the model bundle once, before any subject is applied (a refused bundle stops here,
with the reason, instead of in every subject's job).

input: bundle (the bundle folder); output: what was checked (JSON); params: fpr, device (config apply).
"""

from spatial_msma.apply.subject import ApplyModel
from spatial_msma.io import InputError, write_json
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
try:
    model = ApplyModel.load(sm.input.bundle, sm.params.fpr, sm.params.device)
except InputError as err:
    logger.error("refused: %s", err)
    raise
notes = model.bundle.version_notes()
for note in notes:
    logger.info("version differs: %s", note)
write_json({"bundle": str(model.bundle.path), "method": model.bundle.manifest["method"],
            "made_by": model.bundle.manifest["versions"], "template": model.bundle.manifest["template"],
            "protocol": model.protocol, "threshold": model.threshold, "version_notes": notes}, sm.output[0])
logger.info("model bundle %s: %s, %s threshold %.6g", model.bundle.path, model.bundle.manifest["method"],
            model.protocol, model.threshold)
