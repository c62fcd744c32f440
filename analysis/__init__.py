"""Statistics, figures and the report over a sweep's Parquet tables (pandas/scipy/matplotlib only)."""

from analysis import report
from analysis.correlations import correlations
from analysis.factors import FACTORS, Factor, factor_pairs, paired_factors
from analysis.findings import Finding
from analysis.granulated import granulated_kendall
from analysis.per_point import per_point, summarize_per_point
from analysis.protocol import select
from analysis.robustness import conditional_mutual_information, robust_sign_error
from analysis.tables import Tables, load
from analysis.manifold import trajectory_profiles

__all__ = [
    "FACTORS",
    "Factor",
    "Finding",
    "Tables",
    "conditional_mutual_information",
    "correlations",
    "factor_pairs",
    "granulated_kendall",
    "load",
    "paired_factors",
    "per_point",
    "report",
    "robust_sign_error",
    "select",
    "summarize_per_point",
    "trajectory_profiles",
]
