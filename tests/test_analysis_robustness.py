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


def sweep(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"width": w, "depth": d, "learning_rate": lr, "seed": s}
            for w, d, lr, s in itertools.product((32, 64, 128), (1, 2), (0.01, 0.1), range(3))]
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


def test_robust_sign_error_against_a_loop_over_environments():
    df = sweep()
    got = robust_sign_error(df, ["noise", "tracks_gap"], hyperparams=["width", "depth", "learning_rate"]).set_index("metric")
    settings = df.groupby(["width", "depth", "learning_rate"]).groups
    errors = []
    for a, b in itertools.combinations(settings, 2):
        if sum(x != y for x, y in zip(a, b)) != 1:
            continue
        wrong = total = 0
        for p in settings[a]:
            for q in settings[b]:
                dm, dg = df.noise[p] - df.noise[q], df.gap[p] - df.gap[q]
                if dm != 0 and dg != 0:
                    total += 1
                    wrong += np.sign(dm) != np.sign(dg)
        errors.append(wrong / total)
    # Widths: 3 pairs × 4 depth/lr settings; depths: 6 width/lr settings; learning rates: 6.
    assert got.loc["noise", "n_environments"] == len(errors) == 3 * 4 + 6 + 6
    assert got.loc["noise", "robust_sign_error"] == pytest.approx(max(errors))
    assert got.loc["noise", "mean_sign_error"] == pytest.approx(np.mean(errors))
    assert got.loc["tracks_gap", "robust_sign_error"] == 0.0
    flipped = robust_sign_error(df.assign(backwards=-df["gap"]), ["backwards"], hyperparams=["width", "depth"])
    assert flipped.iloc[0]["robust_sign_error"] == 1.0


def test_seeds_alone_give_no_environment_and_unknown_metrics_are_named():
    df = pd.DataFrame({"width": [64] * 3, "seed": [0, 1, 2], "gap": [0.1, 0.3, 0.2],
                       "jacobian_softmax": [1.0, 3.0, 2.0]})
    result = robust_sign_error(df, metrics=["jacobian_softmax"])
    assert result.iloc[0]["n_environments"] == 0 and np.isnan(result.iloc[0]["robust_sign_error"])
    assert conditional_mutual_information(df, metrics=["jacobian_softmax"]).iloc[0]["n_pairs"] == 3
    for measure in (robust_sign_error, conditional_mutual_information):
        with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the table"):
            measure(df, metrics=["nope"])
