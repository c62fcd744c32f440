"""Conditional mutual information and robust sign-error against direct computations
(scikit-learn's mutual information, plain loops over environments) and planted measures."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mutual_info_score

from analysis.robustness import conditional_mutual_information, robust_sign_error


def sweep(seed: int = 0, seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"width": w, "depth": d, "learning_rate": lr, "seed": s}
            for w, d, lr, s in itertools.product((32, 64, 128), (1, 2), (0.01, 0.1), range(seeds))]
    df = pd.DataFrame(rows)
    df["gap"] = 0.3 - 0.05 * np.log2(df["width"] / 32) + 0.04 * df["depth"] + rng.normal(0, 0.03, len(df))
    df["tracks_gap"] = df["gap"] * 2 + 1
    df["noise"] = rng.normal(0, 1, len(df))
    df["width_only"] = -df["width"] + rng.normal(0, 1e-3, len(df))  # follows the gap through width alone
    return df


def signs(df: pd.DataFrame, metric: str):
    i, j = np.triu_indices(len(df), k=1)
    dm, dg = df[metric].to_numpy()[i] - df[metric].to_numpy()[j], df["gap"].to_numpy()[i] - df["gap"].to_numpy()[j]
    keep = (dm != 0) & (dg != 0)
    return (dm[keep] > 0).astype(int), (dg[keep] > 0).astype(int), i[keep], j[keep]


def test_cmi_without_conditions_is_the_normalized_mutual_information():
    df = sweep()
    got = conditional_mutual_information(df, ["noise", "tracks_gap"], max_condition=0).set_index("metric")
    for metric in ("noise", "tracks_gap"):
        vm, vg, _, _ = signs(df, metric)
        expected = mutual_info_score(vm, vg) / stats.entropy(np.bincount(vg))
        assert got.loc[metric, "cmi"] == pytest.approx(expected, rel=1e-9)
        assert got.loc[metric, "condition"] == "∅" and got.loc[metric, "n_pairs"] == len(vm)
    assert got.loc["tracks_gap", "cmi"] == pytest.approx(1.0)


def test_cmi_conditions_on_hyperparameters_and_takes_the_minimum():
    df = sweep()
    got = conditional_mutual_information(df, ["width_only"], hyperparams=["width"], max_condition=1).iloc[0]
    vm, vg, i, j = signs(df, "width_only")
    key = df["width"].to_numpy()[i] * 1000 + df["width"].to_numpy()[j]
    mi = h = 0.0
    for value in np.unique(key):
        part = key == value
        weight = part.mean()
        mi += weight * mutual_info_score(vm[part], vg[part])
        h += weight * stats.entropy(np.bincount(vg[part], minlength=2))
    assert got["cmi"] == pytest.approx(min(mi / h, mutual_info_score(vm, vg) / stats.entropy(np.bincount(vg))))
    assert got["condition"] == "width" and got["cmi"] < 0.1  # width explains it: little information left
    unconditional = conditional_mutual_information(df, ["width_only"], hyperparams=[], max_condition=0).iloc[0]
    assert unconditional["cmi"] > max(0.1, 3 * got["cmi"])


def reference_sign_errors(df: pd.DataFrame, metric: str, hyperparams: list[str], test_size: int | None,
                          min_ess: float = 12.0) -> list[float]:
    """Dziugaite et al.'s environments written out pair by pair, as their code does (there in
    both orders of each environment, which changes no maximum or mean)."""
    settings = df.groupby(hyperparams).groups
    errors = []
    for a, b in itertools.combinations(settings, 2):
        if sum(x != y for x, y in zip(a, b)) != 1:
            continue
        weights, losses = [], []
        for p in settings[a]:
            for q in settings[b]:
                dg = df.gap[p] - df.gap[q]
                if test_size is None:
                    weight = 1.0
                else:
                    weight = max(0.0, 1.0 - 2 * np.exp(-2 * test_size * (abs(dg) / 2) ** 2)) ** 2
                    weight = weight - 0.5 if weight > 0.5 else 0.0
                weights.append(weight)
                losses.append((1 - np.sign(df[metric][p] - df[metric][q]) * np.sign(dg)) / 2 * weight)
        total, squares = sum(weights), sum(w * w for w in weights)
        if total > 0 and (np.isclose(total ** 2 / squares, min_ess) or total ** 2 / squares > min_ess):
            errors.append(sum(losses) / total)
    return errors


def test_robust_sign_error_against_a_loop_over_environments():
    df = sweep(seeds=4).assign(test_size=2000)
    hyperparams = ["width", "depth", "learning_rate"]
    got = robust_sign_error(df, ["noise", "tracks_gap", "width_only"], hyperparams=hyperparams).set_index("metric")
    for metric in ("noise", "width_only"):
        errors = reference_sign_errors(df, metric, hyperparams, test_size=2000)
        # Widths: 3 pairs × 4 depth/lr settings; depths: 6 width/lr settings; learning rates: 6. Those whose
        # gaps differ within 2000 test points' noise weigh little: some fall below 12 effective pairs.
        row = got.loc[metric]
        assert row["n_environments"] == len(errors) and 0 < len(errors) < 3 * 4 + 6 + 6
        assert row["n_environments"] + row["n_environments_small"] == 3 * 4 + 6 + 6
        assert row["robust_sign_error"] == pytest.approx(max(errors), abs=1e-12)
        assert row["p90_sign_error"] == pytest.approx(np.percentile(errors, 90), abs=1e-12)
        assert row["mean_sign_error"] == pytest.approx(np.mean(errors), abs=1e-12)
        assert row["sign_error_note"] == ""
    assert got.loc["tracks_gap", "robust_sign_error"] == 0.0
    flipped = robust_sign_error(df.assign(backwards=-df["gap"]), ["backwards"], hyperparams=["width", "depth"])
    assert flipped.iloc[0]["robust_sign_error"] == 1.0


def test_robust_sign_error_counts_ties_and_small_environments():
    # Three seeds a setting: 9 pairs an environment, fewer than the 12 asked for.
    df = sweep(seeds=3)
    hyperparams = ["width", "depth", "learning_rate"]
    small = robust_sign_error(df, ["noise"], hyperparams=hyperparams).iloc[0]
    assert np.isnan(small["robust_sign_error"]) and small["n_environments"] == 0
    assert small["n_environments_small"] == 3 * 4 + 6 + 6
    assert "none of the 24 environments has an effective sample of 12 pairs" in small["sign_error_note"]
    assert "test sizes unknown" in small["sign_error_note"]
    # Without test sizes every pair weighs 1, and a metric that ties within environments (the
    # parameter count where only the learning rate changes) costs 1/2 a pair there.
    df["param_count"] = -df["width"] * 1000 + df["depth"]  # (falling with width as the gap does)
    got = robust_sign_error(df, ["param_count", "noise"], hyperparams=hyperparams, min_ess=9).set_index("metric")
    for metric in ("param_count", "noise"):
        errors = reference_sign_errors(df, metric, hyperparams, test_size=None, min_ess=9)
        assert len(errors) == got.loc[metric, "n_environments"] == 3 * 4 + 6 + 6
        assert got.loc[metric, "robust_sign_error"] == pytest.approx(max(errors), abs=1e-12)
        assert got.loc[metric, "mean_sign_error"] == pytest.approx(np.mean(errors), abs=1e-12)
    assert got.loc["param_count", "robust_sign_error"] == 0.5
    assert got.loc["param_count", "worst_environment"].startswith("learning_rate")
    # Hoeffding's weights are for an accuracy gap: another target weighs every pair 1, and says so
    other = robust_sign_error(df.assign(test_size=1000, loss_gap=df["gap"]), ["noise"], target="loss_gap",
                              hyperparams=hyperparams, min_ess=9).iloc[0]
    assert other["robust_sign_error"] == got.loc["noise", "robust_sign_error"]
    assert "the weights are for an accuracy gap, not loss_gap" in other["sign_error_note"]


def test_a_full_batch_is_an_environment_of_the_batch_size():
    rng = np.random.default_rng(8)
    df = pd.DataFrame({"batch_size": np.repeat([128, 1000], 4), "full_batch": np.repeat([False, True], 4),
                       "seed": np.tile(range(4), 2), "gap": np.repeat([0.1, 0.3], 4) + rng.normal(0, 0.01, 8)})
    df["jacobian_softmax"] = df["gap"]
    got = robust_sign_error(df, ["jacobian_softmax"], min_ess=16).iloc[0]
    assert got["n_environments"] == 1 and got["worst_environment"] == "batch_size: 128 vs full"
    assert got["robust_sign_error"] == 0.0


def test_full_batch_networks_of_two_training_set_sizes_are_an_environment_of_the_size():
    # A full batch is the training set: its batch_size column differs with train_size, yet the two
    # settings differ in train_size alone, as they do for mini-batch networks.
    rng = np.random.default_rng(9)
    df = pd.DataFrame({"train_size": np.tile(np.repeat([1000, 10000], 4), 2),
                       "full_batch": np.repeat([True, False], 8), "seed": np.tile(range(4), 4)})
    df["batch_size"] = np.where(df["full_batch"], df["train_size"], 128)
    df["gap"] = 0.4 - 0.1 * (df["train_size"] == 10000) + 0.05 * df["full_batch"] + rng.normal(0, 0.005, 16)
    df["jacobian_softmax"] = df["gap"]
    got = robust_sign_error(df, ["jacobian_softmax"], min_ess=16).iloc[0]
    assert got["n_environments"] == 4 and got["robust_sign_error"] == 0.0  # two sizes × two batchings
    loop = [f"{h}: {a} vs {b}" for h, a, b in (("train_size", 1000, 10000), ("batch_size", "full", 128))]
    assert got["worst_environment"] in loop


def test_a_metric_that_tracks_the_gap_is_not_judged_by_noise():
    # The learning rate leaves the gap alone: in its environments the gaps differ by noise only.
    # Weighted, those pairs do not count, and a metric close to the gap keeps a low robust sign-error.
    df = sweep(seeds=4)
    df["gap"] = 0.3 - 0.05 * np.log2(df["width"] / 32) + 0.04 * df["depth"]
    df["gap"] += np.random.default_rng(5).normal(0, 0.002, len(df))
    df["close"] = df["gap"] + np.random.default_rng(6).normal(0, 0.002, len(df))
    hyperparams = ["width", "depth", "learning_rate"]
    weighted = robust_sign_error(df.assign(test_size=10000), ["close"], hyperparams=hyperparams).iloc[0]
    unweighted = robust_sign_error(df, ["close"], hyperparams=hyperparams).iloc[0]
    assert weighted["robust_sign_error"] < 0.1 < unweighted["robust_sign_error"]
    assert weighted["n_environments_small"] == 6 and unweighted["worst_environment"].startswith("learning_rate")


def test_seeds_alone_give_no_environment_and_unknown_metrics_are_named():
    df = pd.DataFrame({"width": [64] * 3, "seed": [0, 1, 2], "gap": [0.1, 0.3, 0.2],
                       "jacobian_softmax": [1.0, 3.0, 2.0]})
    result = robust_sign_error(df, metrics=["jacobian_softmax"])
    assert result.iloc[0]["n_environments"] == 0 and np.isnan(result.iloc[0]["robust_sign_error"])
    assert conditional_mutual_information(df, metrics=["jacobian_softmax"]).iloc[0]["n_pairs"] == 3
    for measure in (robust_sign_error, conditional_mutual_information):
        with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the table"):
            measure(df, metrics=["nope"])
