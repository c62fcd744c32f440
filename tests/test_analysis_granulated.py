"""Granulated Kendall: a hand-built table with known ψ, and a brute-force scipy loop."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import granulated_kendall
from analysis.granulated import PSI, grouping_hyperparams
from analysis.synthetic import SyntheticSweep, synthetic_networks


def known_table() -> pd.DataFrame:
    """width × depth grid. Within width 64 (depth varies) metric and gap agree: τ = 1; within
    width 128, pairs (1,2) and (1,4) disagree and (2,4) agree: τ = −1/3; so ψ_depth = 1/3.
    Across widths (depth fixed) the metric always rises with the gap: ψ_width = 1."""
    df = pd.DataFrame({
        "width": [64, 64, 64, 128, 128, 128],
        "depth": [1, 2, 4, 1, 2, 4],
        "gap": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "jacobian_softmax": [1.0, 2.0, 3.0, 6.0, 4.0, 5.0],
        "status": ["converged"] * 6,
    })
    # Excluded and counted: a diverged network (at a new depth, which must not count as a
    # level) and one without the metric.
    extra = pd.DataFrame({"width": [64, 128], "depth": [8, 8], "gap": [0.1, 0.2],
                          "jacobian_softmax": [9.0, np.nan], "status": ["diverged", "converged"]})
    return pd.concat([df, extra], ignore_index=True)


def psi(result: pd.DataFrame, metric: str, hyperparam: str) -> pd.Series:
    return result[(result.metric == metric) & (result.hyperparam == hyperparam)].iloc[0]


def test_hand_built_table_gives_the_known_psi():
    result = granulated_kendall(known_table(), metrics=["jacobian_softmax"])
    width, depth, overall = (psi(result, "jacobian_softmax", h) for h in ("width", "depth", PSI))
    assert width["tau"] == pytest.approx(1.0)
    assert depth["tau"] == pytest.approx(1 / 3)
    assert overall["tau"] == pytest.approx(2 / 3)
    assert (width["n_groups"], depth["n_groups"], overall["n_groups"]) == (3, 2, 2)
    # Groups are formed over networks with values: the metric-less one at depth 8 forms none.
    assert depth["n_groups_undefined"] == 0 and width["n_groups_undefined"] == 0
    assert width["n_networks"] == 6 and width["n_excluded"] == 2


def test_matches_a_brute_force_scipy_loop_over_groups():
    df = synthetic_networks(SyntheticSweep(n_networks=300), np.random.default_rng(1))
    rng = np.random.default_rng(2)
    df = pd.concat([df, df.assign(seed=1, gap=df["gap"] + rng.normal(0, 0.2, len(df)))], ignore_index=True)
    df["jacobian_softmax"] = df["gap"] + rng.normal(0, 0.05, len(df))
    df["margin"] = np.where(rng.random(len(df)) < 0.2, np.nan, -df["gap"] + rng.normal(0, 0.1,
                                                                                       len(df)))
    result = granulated_kendall(df, metrics=["jacobian_softmax", "margin"])
    trained = df[~df.status.isin(["diverged", "failed"])]
    hyperparams = [h for h in result.hyperparam.unique() if h != PSI]
    # Seeds are samples: they keep groups apart (only h varies in one) but get no ψ of their own.
    assert "seed" not in hyperparams and trained["seed"].nunique() > 1
    independent = grouping_hyperparams([*hyperparams, "seed"])
    assert "full_batch" not in independent and "batch_size" in independent
    for metric in ("jacobian_softmax", "margin"):
        usable = trained[np.isfinite(trained[metric]) & np.isfinite(trained["gap"])]
        for h in set(independent) - {"seed"}:
            taus, undefined = [], 0
            others = [c for c in independent if c != h]
            for _, group in usable.groupby(others, observed=True, dropna=False):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", stats.ConstantInputWarning)
                    tau = (stats.kendalltau(group[metric], group["gap"]).statistic
                           if len(group) > 1 else np.nan)
                if np.isfinite(tau):
                    taus.append(tau)
                else:
                    undefined += 1
            got = psi(result, metric, h)
            assert got["tau"] == pytest.approx(np.mean(taus), abs=1e-12), (metric, h)
            assert (got["n_groups"], got["n_groups_undefined"]) == (len(taus), undefined)


def test_a_hyperparameter_tied_to_another_is_reported_not_used():
    df = synthetic_networks(SyntheticSweep(n_networks=96, diverged_share=0.0),
                            np.random.default_rng(0))
    df["jacobian_softmax"] = df["gap"]
    result = granulated_kendall(df, metrics=["jacobian_softmax"])
    tied = psi(result, "jacobian_softmax", "full_batch")
    assert np.isnan(tied["tau"]) and "never varies alone" in tied["note"]
    assert psi(result, "jacobian_softmax", "batch_size")["tau"] == pytest.approx(1.0)
    overall = psi(result, "jacobian_softmax", PSI)
    assert overall["tau"] == pytest.approx(1.0)
    assert overall["note"] == "left out (no ψ): full_batch"


def test_learning_rates_listed_per_optimizer_are_compared_within_an_optimizer():
    # Each optimizer has its own rates, so a rate fixes the optimizer; the optimizer must still
    # hold fixed in the rate's groups (Jiang et al.: only h varies in a group).
    rows = [{"optimizer": o, "learning_rate": lr, "seed": seed}
            for o, rates in (("sgd", (0.1, 0.01)), ("adam", (1e-3, 1e-4))) for lr in rates for seed in (0, 1)]
    df = pd.DataFrame(rows).assign(status="converged")
    df["gap"] = np.log10(df["learning_rate"]) + 5 * (df["optimizer"] == "adam") + 0.01 * df["seed"]
    df["jacobian_softmax"] = np.log10(df["learning_rate"]) + 0.02 * df["seed"]
    result = granulated_kendall(df, metrics=["jacobian_softmax"])
    rate = psi(result, "jacobian_softmax", "learning_rate")
    assert rate["tau"] == pytest.approx(1.0) and rate["n_groups"] == 4  # (optimizer, seed) groups
    optimizer = psi(result, "jacobian_softmax", "optimizer")
    assert np.isnan(optimizer["tau"]) and optimizer["note"].startswith("undefined: none of the")


def test_constant_metric_and_no_varying_hyperparameter_give_nan_with_reasons():
    df = known_table().assign(jacobian_softmax=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = granulated_kendall(df, metrics=["jacobian_softmax"])
    assert result["tau"].isna().all()
    assert psi(result, "jacobian_softmax", "width")["note"].startswith(
        "undefined: none of the 4 groups where only width varies")  # depth 8 now has a value
    assert psi(result, "jacobian_softmax", PSI)["note"] == "undefined: no hyperparameter has a ψ"
    single = known_table().assign(width=64, depth=1)
    result = granulated_kendall(single, metrics=["jacobian_softmax"])
    assert len(result) == 1
    assert result.iloc[0]["note"] == "undefined: no hyperparameter varies"
    dead = known_table().assign(status="diverged")
    result = granulated_kendall(dead, metrics=["jacobian_softmax"])
    assert result.iloc[0]["note"] == "undefined: no trained networks (all diverged or failed)"
    assert result.iloc[0]["n_excluded"] == len(dead)


def test_seeds_group_networks_but_are_no_axis_of_psi_unless_asked_for():
    df = known_table().iloc[:6]
    df = pd.concat([df.assign(seed=0), df.assign(seed=1, gap=df["gap"][::-1].to_numpy())], ignore_index=True)
    result = granulated_kendall(df, metrics=["jacobian_softmax"])
    assert list(result.hyperparam) == ["width", "depth", PSI]
    # Within seed 1 the gap runs backwards: grouped by seed, ψ_depth is the mean of 1, -1/3 and their negatives.
    assert psi(result, "jacobian_softmax", "depth")["n_groups"] == 4
    assert psi(result, "jacobian_softmax", "depth")["tau"] == pytest.approx(0.0)
    asked = granulated_kendall(df, metrics=["jacobian_softmax"], hyperparams=["width", "depth", "seed"])
    assert list(asked.hyperparam) == ["width", "depth", "seed", PSI]
    assert psi(asked, "jacobian_softmax", "depth")["tau"] == pytest.approx(0.0)
    seeds_only = df[(df.width == 64) & (df.depth == 1)]
    assert granulated_kendall(seeds_only, metrics=["jacobian_softmax"]).iloc[0]["note"] == (
        "undefined: no hyperparameter varies")


def test_explicit_hyperparams_and_unknown_columns():
    result = granulated_kendall(known_table(), hyperparams=["depth"], metrics=["jacobian_softmax"])
    # With width not held fixed, all six trained networks with values form one group.
    everything = known_table().iloc[:6]
    expected = stats.kendalltau(everything["jacobian_softmax"], everything["gap"]).statistic
    assert psi(result, "jacobian_softmax", "depth")["tau"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="not in the table"):
        granulated_kendall(known_table(), hyperparams=["lr"], metrics=["jacobian_softmax"])


def test_full_batch_networks_of_two_training_set_sizes_share_a_train_size_group():
    rows = [{"train_size": n, "full_batch": full, "batch_size": n if full else 128, "seed": seed}
            for n in (1000, 10000) for full in (True, False) for seed in range(3)]
    df = pd.DataFrame(rows)
    df["gap"] = 0.4 - 0.1 * (df["train_size"] == 10000) + 0.03 * df["full_batch"] + 0.01 * df["seed"]
    df["jacobian_softmax"] = df["gap"]
    result = granulated_kendall(df, metrics=["jacobian_softmax"])
    size = psi(result, "jacobian_softmax", "train_size")
    assert size["tau"] == pytest.approx(1.0) and size["n_groups"] == 6  # full and 128, each seed
    assert psi(result, "jacobian_softmax", "batch_size")["n_groups"] == 6  # full vs 128 at each size and seed
    # Sweeps before full_batch was resolved wrote it false for a batch of the whole training set.
    old = df.assign(full_batch=False, batch_size=np.where(df["full_batch"], df["train_size"] + 28, 128))
    again = granulated_kendall(old, metrics=["jacobian_softmax"])
    for h in ("train_size", "batch_size"):
        fields = ["tau", "n_groups"]
        assert psi(again, "jacobian_softmax", h)[fields].equals(psi(result, "jacobian_softmax", h)[fields])
