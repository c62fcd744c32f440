"""Statistics, figures and the report over a sweep's Parquet tables (pandas/scipy/matplotlib only)."""

from analysis import report
from analysis.correlations import correlations
from analysis.factors import FACTORS, Factor, factor_pairs, paired_factors
from analysis.granulated import granulated_kendall
from analysis.per_point import per_point, summarize_per_point
from analysis.tables import Tables, load
from analysis.trajectories import trajectory_profiles

__all__ = [
    "FACTORS",
    "Factor",
    "Tables",
    "correlations",
    "factor_pairs",
    "granulated_kendall",
    "load",
    "paired_factors",
    "per_point",
    "report",
    "summarize_per_point",
    "trajectory_profiles",
]
