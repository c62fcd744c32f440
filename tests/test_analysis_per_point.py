"""Per-point statistics against sklearn's roc_auc_score and scipy's spearmanr, per network."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from analysis import per_point, summarize_per_point
from analysis.per_point import grouped_ranks


def points(n_networks: int = 5, n_points: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = n_networks * n_points
    label = rng.integers(0, 10, rows)
    wrong = rng.random(rows) < 0.3
    jacobian = np.round(rng.exponential(1.0, rows) + wrong, 1)  # rounding makes ties
    return pd.DataFrame({
        "network_id": np.repeat([f"net{i}" for i in range(n_networks)], n_points),
        "checkpoint": pd.Categorical(["end"] * rows),
        "split": pd.Categorical(["test"] * rows),
        "point_index": np.tile(np.arange(n_points), n_networks),
        "label": label,
        "prediction": np.where(wrong, (label + 1) % 10, label),
        "loss": rng.exponential(1.0, rows) + jacobian,
        "jacobian_softmax": jacobian,
        "jacobian_logits": jacobian * rng.uniform(1, 3, rows),
        "transitions": np.nan,
    })


def test_auroc_and_spearman_equal_sklearn_and_scipy_per_network():
    df = points()
    result = per_point(df)
    assert set(result["metric"]) == {"jacobian_softmax", "jacobian_logits"}
    for (network, metric), got in result.set_index(["network_id", "metric"]).iterrows():
        part = df[df.network_id == network]
        wrong = part["label"] != part["prediction"]
        assert got["auroc"] == pytest.approx(roc_auc_score(wrong, part[metric]), abs=1e-12)
        assert got["spearman_loss"] == pytest.approx(
            stats.spearmanr(part[metric], part["loss"]).statistic, abs=1e-12)
        assert (got["n_points"], got["n_misclassified"]) == (len(part), wrong.sum())
        assert got["note"] == ""


def test_grouped_ranks_equal_rankdata_within_each_group():
    rng = np.random.default_rng(1)
    group = rng.integers(0, 4, 200)
    values = rng.integers(0, 10, 200).astype(float)
    ranks = grouped_ranks(group, values)
    for g in range(4):
        np.testing.assert_array_equal(ranks[group == g], stats.rankdata(values[group == g]))


def test_other_checkpoints_and_splits_are_not_mixed_in():
    df = points(2)
    other = df.assign(checkpoint=pd.Categorical(["init"] * len(df)), jacobian_softmax=-df[
        "jacobian_softmax"])
    result = per_point(pd.concat([df, other], ignore_index=True), metrics=["jacobian_softmax"])
    pd.testing.assert_frame_equal(result, per_point(df, metrics=["jacobian_softmax"]))
    with pytest.raises(ValueError, match=r"columns \['jacobian_sofmax'\] are not in the table"):  # mistyped
        per_point(df, metrics=["jacobian_sofmax"])
    with pytest.raises(ValueError, match="no rows at checkpoint 'final'; this sweep's checkpoints: end, init"):
        per_point(pd.concat([df, other], ignore_index=True), checkpoint="final")


def test_degenerate_networks_get_nan_with_reasons():
    df = points(4, 20)
    is_net = df["network_id"].to_numpy()[:, None] == np.array(["net0", "net1", "net2", "net3"])
    df.loc[is_net[:, 0], "prediction"] = df.loc[is_net[:, 0], "label"]  # all right
    df.loc[is_net[:, 1], "prediction"] = (df.loc[is_net[:, 1], "label"] + 1) % 10  # all wrong
    df.loc[is_net[:, 2], "jacobian_softmax"] = 1.0  # constant metric
    df.loc[np.flatnonzero(is_net[:, 3])[:19], "jacobian_softmax"] = np.nan  # one point left
    result = per_point(df, metrics=["jacobian_softmax"]).set_index("network_id")
    assert np.isnan(result.loc["net0", "auroc"])
    assert result.loc["net0", "note"] == "no AUROC: no misclassified point"
    assert result.loc["net1", "note"] == "no AUROC: every point misclassified"
    assert np.isnan(result.loc["net2", "spearman_loss"])
    assert result.loc["net2", "auroc"] == pytest.approx(0.5)  # all tied: chance
    assert "no ρ: jacobian_softmax or loss is constant" in result.loc["net2", "note"]
    assert result.loc["net3", "n_excluded"] == 19 and result.loc["net3", "n_points"] == 1
    assert result.loc["net3", "note"] == (
        "undefined: fewer than 2 points with jacobian_softmax and loss; "
        "19 points missing jacobian_softmax, loss, label or prediction")


def test_summary_is_the_median_and_quartiles_across_networks():
    result = per_point(points(7))
    summary = summarize_per_point(result).set_index("metric")
    for metric, part in result.groupby("metric"):
        assert summary.loc[metric, "auroc_median"] == pytest.approx(part["auroc"].median())
        assert summary.loc[metric, "spearman_q25"] == pytest.approx(
            np.quantile(part["spearman_loss"], 0.25))
        assert summary.loc[metric, "share_auroc_above_half"] == pytest.approx(
            (part["auroc"] > 0.5).mean())


def test_empty_points_table_gives_an_empty_frame():
    result = per_point(points(1).iloc[:0])
    assert result.empty and "auroc" in result.columns
    assert summarize_per_point(result).empty
