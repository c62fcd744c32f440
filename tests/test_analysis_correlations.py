"""analysis.correlations against scipy computed directly."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import correlations
from analysis.correlations import EXACT_P_MAX_NETWORKS, ResampleStatistics, bootstrap_intervals


def table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    gap = rng.random(n)
    return pd.DataFrame({
        "dataset": pd.Categorical(np.where(np.arange(n) % 2 == 0, "digits", "mnist")),
        "status": pd.Categorical(["converged"] * n),
        "jacobian_softmax": gap + rng.normal(0, 0.3, n),
        "margin": -gap + rng.normal(0, 0.5, n),
        "param_count": rng.integers(100, 120, n),  # ties
        "train_loss": rng.random(n),
        "gap": gap,
        "loss_gap": gap * 2 + rng.normal(0, 0.1, n),
    })


def row(result: pd.DataFrame, dataset: str, metric: str, target: str = "gap") -> pd.Series:
    match = result[(result["dataset"] == dataset) & (result["metric"] == metric)
                   & (result["target"] == target)]
    assert len(match) == 1
    return match.iloc[0]


def test_point_estimates_and_p_values_equal_scipy_per_dataset_and_pooled():
    df = table()
    result = correlations(df, bootstrap=False)
    assert set(result["dataset"]) == {"digits", "mnist", "pooled"}
    assert set(result["metric"]) == {"jacobian_softmax", "margin", "param_count", "train_loss"}
    for dataset, part in [("digits", df[df.dataset == "digits"]),
                          ("mnist", df[df.dataset == "mnist"]), ("pooled", df)]:
        for metric in ("jacobian_softmax", "param_count"):
            for target in ("gap", "loss_gap"):
                got = row(result, dataset, metric, target)
                rho = stats.spearmanr(part[metric], part[target])
                tau = stats.kendalltau(part[metric], part[target])
                assert got["rho"] == pytest.approx(rho.statistic, abs=1e-12)
                assert got["rho_p"] == pytest.approx(rho.pvalue, rel=1e-9)
                assert got["tau"] == pytest.approx(tau.statistic, abs=1e-12)
                assert got["tau_p"] == pytest.approx(tau.pvalue, rel=1e-9)
                assert got["n"] == len(part) and got["n_excluded"] == 0
                assert np.isnan(got["rho_lo"])  # no bootstrap asked


def test_metric_equal_to_gap_gives_one_and_reversed_gives_minus_one():
    df = table()
    df["same"] = df["gap"] * 3 + 1
    df["reversed"] = -df["gap"]
    result = correlations(df, metrics=["same", "reversed"], targets=("gap",), n_resamples=200)
    for dataset in ("digits", "mnist", "pooled"):
        same, reversed_ = row(result, dataset, "same"), row(result, dataset, "reversed")
        assert (same["rho"], same["tau"]) == (pytest.approx(1.0), pytest.approx(1.0))
        assert (reversed_["rho"], reversed_["tau"]) == (pytest.approx(-1.0), pytest.approx(-1.0))
        assert same["rho_lo"] == pytest.approx(1.0) and same["tau_hi"] == pytest.approx(1.0)


def test_bootstrap_interval_equals_scipy_bootstrap_on_the_pairs():
    df = table(60, seed=3)
    result = correlations(df, metrics=["jacobian_softmax"], targets=("gap",), by=None,
                          n_resamples=500, seed=11)
    got = row(result, "pooled", "jacobian_softmax")
    x, y = df["jacobian_softmax"].to_numpy(), df["gap"].to_numpy()
    for name, statistic in (("rho", lambda a, b: stats.spearmanr(a, b).statistic),
                            ("tau", lambda a, b: stats.kendalltau(a, b).statistic)):
        reference = stats.bootstrap((x, y), statistic, paired=True, vectorized=False,
                                    n_resamples=500, method="percentile",
                                    rng=np.random.default_rng(11)).confidence_interval
        assert got[f"{name}_lo"] == pytest.approx(reference.low, abs=1e-12)
        assert got[f"{name}_hi"] == pytest.approx(reference.high, abs=1e-12)
        assert got[f"{name}_lo"] <= got[name] <= got[f"{name}_hi"]


@pytest.mark.parametrize("ties", [False, True])
def test_resample_statistics_equal_scipy_on_each_resample(ties):
    rng = np.random.default_rng(5)
    n = 30
    x = rng.integers(0, 5, n).astype(float) if ties else rng.random(n)
    y = x + (rng.integers(0, 3, n) if ties else rng.random(n))
    index = rng.integers(0, n, (25, n))
    rho, tau = ResampleStatistics(x, y)(index)
    for b, draw in enumerate(index):
        assert rho[b] == pytest.approx(stats.spearmanr(x[draw], y[draw]).statistic, abs=1e-12)
        assert tau[b] == pytest.approx(stats.kendalltau(x[draw], y[draw]).statistic, abs=1e-12)


def test_diverged_failed_and_missing_values_are_excluded_and_counted():
    df = table(30)
    df["status"] = df["status"].cat.add_categories(["diverged", "failed"])
    df.loc[[0, 1], "status"] = "diverged"
    df.loc[2, "status"] = "failed"
    df.loc[[3, 4], "jacobian_softmax"] = np.nan
    df.loc[5, "gap"] = np.inf
    result = correlations(df, metrics=["jacobian_softmax"], targets=("gap",), by=None,
                          bootstrap=False)
    got = row(result, "pooled", "jacobian_softmax")
    kept = df.iloc[6:]
    assert got["n"] == 24 and got["n_excluded"] == 6
    assert got["rho"] == pytest.approx(stats.spearmanr(kept["jacobian_softmax"], kept["gap"])[0])
    assert got["note"] == "excluded 3 diverged/failed, 3 missing jacobian_softmax or gap"


def test_degenerate_inputs_give_nan_with_a_reason_and_no_warning():
    df = table(12)
    df["constant"] = 1.0
    df["all_nan"] = np.nan
    df["status"] = df["status"].cat.add_categories(["diverged"])
    df.loc[df.dataset == "mnist", "status"] = "diverged"  # a data set with no trained network
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = correlations(df, metrics=["constant", "all_nan", "jacobian_softmax"],
                              targets=("gap",), n_resamples=100)
    assert row(result, "digits", "constant")["note"].startswith(
        "undefined: constant is constant over the 6 networks")
    assert row(result, "digits", "all_nan")["note"].startswith(
        "undefined: 0 network(s) with values")
    empty = row(result, "mnist", "jacobian_softmax")
    assert empty["n"] == 0 and empty["n_excluded"] == 6
    assert "undefined: 0 network(s)" in empty["note"]
    for _, r in result[result["note"].str.startswith("undefined")].iterrows():
        assert np.isnan([r["rho"], r["tau"], r["rho_p"], r["rho_lo"]]).all()


def test_single_network_and_constant_target():
    one = table(1)
    result = correlations(one, metrics=["jacobian_softmax"], bootstrap=False)
    assert result["rho"].isna().all()
    assert result["note"].str.contains("1 network(s) with values, need at least 3",
                                       regex=False).all()
    flat = table(10).assign(gap=0.5)
    got = row(correlations(flat, metrics=["jacobian_softmax"], by=None, bootstrap=False),
              "pooled", "jacobian_softmax")
    assert np.isnan(got["rho"]) and got["note"] == "undefined: gap is constant over the 10 networks"


def test_tiny_sample_bootstrap_says_when_its_interval_is_undefined():
    # x takes two values: 1 resample in 8 draws only one of them
    df = pd.DataFrame({"m": [1.0, 1.0, 2.0, 2.0], "gap": [1.0, 2.0, 4.0, 3.0]})
    got = row(correlations(df, metrics=["m"], targets=("gap",), by=None, n_resamples=200),
              "pooled", "m")
    assert np.isfinite(got["rho"]) and np.isnan(got["rho_lo"]) and np.isnan(got["tau_hi"])
    assert "bootstrap interval undefined" in got["note"] and "of 200 resamples drew a constant column" in got["note"]


def test_a_few_resamples_without_a_correlation_leave_the_interval_to_the_others():
    # Eight networks, a metric of two values (a parameter count): about 8 in 1000 resamples draw one.
    rng = np.random.default_rng(4)
    x, y = np.repeat([1.0, 2.0], 4), rng.random(8) + np.repeat([0.0, 0.3], 4)
    got = row(correlations(pd.DataFrame({"m": x, "gap": y}), metrics=["m"], targets=("gap",), by=None,
                           n_resamples=1000, seed=5), "pooled", "m")
    for name, statistic in (("rho", lambda a, b: stats.spearmanr(a, b).statistic),
                            ("tau", lambda a, b: stats.kendalltau(a, b).statistic)):
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            draws = stats.bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=1000,
                                    method="percentile", rng=np.random.default_rng(5)).bootstrap_distribution
        undefined = int(np.isnan(draws).sum())
        assert 0 < undefined <= 50
        low, high = np.nanpercentile(draws, [2.5, 97.5])
        assert got[f"{name}_lo"] == pytest.approx(low, abs=1e-12) and got[f"{name}_hi"] == pytest.approx(high, abs=1e-12)
    assert f"bootstrap interval over {1000 - undefined} of 1000 resamples ({undefined} drew a constant column)" in \
        got["note"]


def test_unknown_columns_are_a_clear_error():
    with pytest.raises(ValueError, match=r"\['nope'\] are not in the table"):
        correlations(table(), metrics=["nope"])
    with pytest.raises(ValueError, match="cannot group by 'lab'"):
        correlations(table(), by="lab")


def test_bootstrap_direct_helper_is_seeded():
    rng = np.random.default_rng(0)
    x, y = rng.random(20), rng.random(20)
    assert bootstrap_intervals(x, y, 100, 1) == bootstrap_intervals(x, y, 100, 1)
    assert bootstrap_intervals(x, y, 100, 1) != bootstrap_intervals(x, y, 100, 2)


def test_one_data_set_has_no_pooled_rows_repeating_it():
    df = pd.DataFrame({"dataset": ["digits"] * 6, "status": ["converged"] * 6, "m": [1, 2, 3, 4, 6, 5],
                       "gap": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    result = correlations(df, metrics=["m"], targets=["gap"], bootstrap=False)
    assert list(result["dataset"]) == ["digits"]
    two = pd.concat([df, df.assign(dataset="mnist")])
    assert list(correlations(two, metrics=["m"], targets=["gap"], bootstrap=False)["dataset"]) == ["digits", "mnist",
                                                                                                     "pooled"]
    # by name, whatever order the files were read in (a category's order)
    read = pd.concat([df.assign(dataset="mnist"), df])
    read["dataset"] = pd.Categorical(read["dataset"], categories=["mnist", "digits"])
    assert list(correlations(read, metrics=["m"], targets=["gap"], bootstrap=False)["dataset"]) == ["digits", "mnist",
                                                                                                      "pooled"]


def test_correlations_split_or_pool_by_architecture():
    df = table(60, seed=3).assign(architecture=pd.Categorical(np.where(np.arange(60) < 25, "fc", "cnn")))
    result = correlations(df, by="architecture", bootstrap=False)
    assert set(result["architecture"]) == {"fc", "cnn", "pooled"}
    for group, part in [("fc", df.iloc[:25]), ("cnn", df.iloc[25:]), ("pooled", df)]:
        got = result[(result["architecture"] == group) & (result["metric"] == "jacobian_softmax")
                     & (result["target"] == "gap")].iloc[0]
        assert got["rho"] == pytest.approx(stats.spearmanr(part["jacobian_softmax"], part["gap"]).statistic, abs=1e-12)
        assert got["n"] == len(part)


def pairings_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p by brute force: the share of all n! pairings of x with y whose |ρ| is at least
    the observed one."""
    import itertools

    observed = abs(stats.spearmanr(x, y).statistic)
    values = [abs(stats.spearmanr(x[list(order)], y).statistic) for order in itertools.permutations(range(len(x)))]
    return float(np.mean(np.asarray(values) >= observed - 1e-12))


@pytest.mark.parametrize("x,y", [
    ([1, 2, 3, 4], [1, 2, 3, 4]),  # perfect: 2 of 24 pairings, p = 0.083, not 0
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    ([1, 1, 2, 3, 5, 8, 13], [3, 1, 4, 1, 5, 9, 2]),  # ties in both
    ([0.3, 0.1, 0.4, 0.15, 0.9, 0.26, 0.5], [7, 6, 5, 4, 3, 2, 1]),
])
def test_a_few_networks_get_the_exact_p_of_every_pairing(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    got = correlations(pd.DataFrame({"dataset": "digits", "m": x, "gap": y}), metrics=["m"], targets=("gap",),
                       bootstrap=False).iloc[0]
    assert got["rho_p"] == pytest.approx(pairings_p(x, y), rel=1e-9)
    assert got["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    # with an interval, the note says how little a bootstrap over so few is worth
    frame = pd.DataFrame({"dataset": "digits", "m": x, "gap": y})
    noted = correlations(frame, metrics=["m"], targets=("gap",), n_resamples=200).iloc[0]["note"]
    assert f"a bootstrap over {len(x)} networks is narrower than they warrant" in noted


def test_perfect_rankings_never_get_a_p_of_zero():
    import math

    for n in (EXACT_P_MAX_NETWORKS, EXACT_P_MAX_NETWORKS + 1, 40):
        gap = np.arange(n, dtype=float)
        got = correlations(pd.DataFrame({"dataset": "digits", "m": gap ** 2, "gap": gap}), metrics=["m"],
                           targets=("gap",), bootstrap=False).iloc[0]
        # exact up to EXACT_P_MAX_NETWORKS (2 of n! pairings); beyond, never below 1/n! (the least
        # any pairing test could give: the observed pairing is one of them)
        assert got["rho_p"] >= 1 / math.factorial(n) and got["tau_p"] >= 1 / math.factorial(n)
        if n <= EXACT_P_MAX_NETWORKS:
            assert got["rho_p"] == pytest.approx(2 / math.factorial(n), rel=1e-9)


def test_too_few_resamples_for_a_95_interval_are_refused():
    with pytest.raises(ValueError, match="n_resamples must be at least 100, got 50"):
        correlations(table(20, seed=1), n_resamples=50)
    assert len(correlations(table(20, seed=1), n_resamples=50, bootstrap=False))
