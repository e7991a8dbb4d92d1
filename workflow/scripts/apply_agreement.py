"""Snakemake entry point: native-space lesion masks of the lesioned test volumes against the template-space
evaluation (component TPR and PPV at the apply protocol).

input: statuses (apply_check status files), references (native references), template_metrics (that
protocol's metrics CSV of Spatial-MSMA); output: table, summary; params: volumes. The lesions are counted by the
ids they were labelled with on the template grid (native_lesions, apply_subject), not relabelled here.
"""

from spatial_msma.apply.agreement import write_agreement
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
write_agreement(sm.params.volumes, sm.input.statuses, sm.input.references, sm.input.template_metrics,
                sm.output.table, sm.output.summary, script_logger(sm.log[0]))
