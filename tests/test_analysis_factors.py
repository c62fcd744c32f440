"""Paired factor studies on hand-built tables whose pair statistics are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import FACTORS, factor_pairs, paired_factors

BASE = {
    "dataset": "digits", "train_size": 1000, "random_label_fraction": 0.0, "augmentation": True,
    "width": 64, "depth": 2, "activation": "relu", "optimizer": "sgd", "learning_rate": 0.01,
    "batch_size": 128, "full_batch": False, "init": "he_normal", "status": "converged",
}


def networks(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{**BASE, **r} for r in rows])
    df["network_id"] = [f"n{i}" for i in range(len(df))]
    return df.astype({"dataset": "category", "activation": "category", "status": "category"})


def activation_table() -> pd.DataFrame:
    """Four seeds, relu vs tanh. Δmetric = [1, 2, −0.5, 3], Δgap = [.1, .1, .1, 0]:
    3 pairs move (the 4th gap is unchanged), 2 of them the same way; ratios [2, 3, .5, 4]."""
    rows = []
    for seed, (m_tanh, g_tanh) in enumerate([(2.0, 0.2), (3.0, 0.2), (0.5, 0.2), (4.0, 0.1)]):
        rows.append({"seed": seed, "activation": "relu", "jacobian_softmax": 1.0, "gap": 0.1})
        rows.append({"seed": seed, "activation": "tanh", "jacobian_softmax": m_tanh,
                     "gap": g_tanh})
    # A diverged tanh network is not paired with its relu twin.
    rows.append({"seed": 9, "activation": "relu", "jacobian_softmax": 1.0, "gap": 0.1})
    rows.append({"seed": 9, "activation": "tanh", "jacobian_softmax": 9.0, "gap": 0.9,
                 "status": "diverged"})
    return networks(rows)


def factor_row(result: pd.DataFrame, factor: str, metric: str, comparison: str | None = None):
    match = result[(result.factor == factor) & (result.metric == metric)]
    if comparison is not None:
        match = match[match.comparison == comparison]
    assert len(match) == 1
    return match.iloc[0]


def test_known_shares_and_median_ratio():
    result = paired_factors(activation_table(), metrics=["jacobian_softmax"])
    got = factor_row(result, "nonlinearity", "jacobian_softmax")
    assert got["comparison"] == "relu → tanh"
    assert (got["n_pairs"], got["n_moving"]) == (4, 3)
    assert got["share_same_direction"] == pytest.approx(2 / 3)
    assert got["share_metric_up"] == pytest.approx(3 / 4)
    assert got["share_gap_up"] == pytest.approx(3 / 4)
    assert got["median_ratio"] == pytest.approx(2.5)
    assert got["median_gap_change"] == pytest.approx(0.1)


def test_pairs_match_a_brute_force_search():
    df = activation_table()
    pairs = factor_pairs(df, FACTORS[3], "tanh")
    brute = []
    for _, a in df[(df.activation == "relu") & (df.status != "diverged")].iterrows():
        for _, b in df[(df.activation == "tanh") & (df.status != "diverged")].iterrows():
            if all(a[c] == b[c] for c in BASE if c not in ("activation", "status")) and \
                    a["seed"] == b["seed"]:
                brute.append((a["network_id"], b["network_id"]))
    assert sorted(zip(pairs["network_id_good"], pairs["network_id_bad"])) == sorted(brute)


def test_each_hurting_level_is_its_own_comparison_and_tied_columns_may_differ():
    rows = []
    for seed in range(3):
        rows += [
            {"seed": seed, "random_label_fraction": 0.0, "jacobian_softmax": 1.0, "gap": 0.1},
            {"seed": seed, "random_label_fraction": 0.5, "jacobian_softmax": 2.0, "gap": 0.4},
            {"seed": seed, "random_label_fraction": 1.0, "jacobian_softmax": 0.5, "gap": 0.8},
            # Full batch sets the batch size to the training set size: still a pair.
            {"seed": seed, "full_batch": True, "batch_size": 1000, "jacobian_softmax": 3.0,
             "gap": 0.3},
        ]
    result = paired_factors(networks(rows), metrics=["jacobian_softmax"])
    half = factor_row(result, "random labels", "jacobian_softmax",
                      "true labels → 0.5 random labels")
    full = factor_row(result, "random labels", "jacobian_softmax",
                      "true labels → 1 random labels")
    assert (half["n_pairs"], half["share_same_direction"], half["median_ratio"]) == (3, 1.0, 2.0)
    assert (full["n_pairs"], full["share_same_direction"], full["median_ratio"]) == (3, 0.0, 0.5)
    batch = factor_row(result, "full-batch training", "jacobian_softmax")
    assert batch["comparison"] == "SGD (mini-batch) → full batch"
    assert (batch["n_pairs"], batch["share_same_direction"]) == (3, 1.0)
    augmentation = result[result.factor == "data augmentation"].iloc[0]
    assert augmentation["n_pairs"] == 0 and "does not take both" in augmentation["note"]


def test_missing_values_absent_factor_and_unchanged_metric():
    df = activation_table()
    df.loc[1, "jacobian_softmax"] = np.nan  # tanh of seed 0
    df["margin"] = 1.0  # never changes
    result = paired_factors(df.drop(columns=["augmentation"]), metrics=["jacobian_softmax",
                                                                         "margin"])
    got = factor_row(result, "nonlinearity", "jacobian_softmax")
    assert got["n_pairs"] == 3 and got["note"] == "1 pairs missing jacobian_softmax or gap"
    flat = factor_row(result, "nonlinearity", "margin")
    assert np.isnan(flat["share_same_direction"]) and flat["share_metric_up"] == 0.0
    assert "no pair where both metric and target change" in flat["note"]
    assert result[result.factor == "data augmentation"].iloc[0]["note"] == "no augmentation column"
    with pytest.raises(ValueError, match="not in the table"):
        paired_factors(df, metrics=["nope"])
