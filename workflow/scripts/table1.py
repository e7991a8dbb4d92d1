"""Table 1 per protocol (CSV + Markdown with the paper's values) and TPR per lesion size bin.

input:  metrics (results/metrics/{method}_{protocol}.csv, every method x protocol that was run),
        thresholds (results/thresholds/{method}.json; image AUROC and healthy false positives), participants
        (results/cohort/participants.tsv: standard errors over anatomies where several subjects share one)
output: named oracle_csv (results/table1.csv), oracle_md (results/table1.md), fpr05_csv, fpr05_md,
        fpr10_csv, fpr10_md (results/table1_fpr05.csv ...), size_bins_csv (results/table1_size_bins.csv)
        optional stats (results/table1_stats.csv: the paired statistics; the best method per metric is marked
        only where they support it)
params: cfg=config["evaluation"]; optional title, expected_methods, protocols, image_set (the validation and
        ablation tables use the same writer with another title, method list and protocol subset)
"""

import pandas as pd

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.stats import best_methods
from spatial_msma.evaluation.tables import write_tables
from spatial_msma.progress import script_logger

logger = script_logger(snakemake.log[0])  # noqa: F821
stats = snakemake.input.get("stats")  # noqa: F821
write_tables(
    metric_csvs=snakemake.input.metrics,  # noqa: F821
    threshold_jsons=snakemake.input.get("thresholds", []),  # noqa: F821
    outputs=dict(snakemake.output.items()),  # noqa: F821
    cfg=EvaluationConfig.from_dict(snakemake.params.cfg),  # noqa: F821
    logger=logger,
    title=snakemake.params.get("title", "Table 1"),  # noqa: F821
    expected_methods=snakemake.params.get("expected_methods"),  # noqa: F821
    protocols=snakemake.params.get("protocols"),  # noqa: F821
    image_set=snakemake.params.get("image_set", "test"),  # noqa: F821
    best=best_methods(pd.read_csv(stats)) if stats else None,
    participants=snakemake.input.get("participants"),  # noqa: F821
)
