"""The findings scorecard: verdicts on synthetic sweeps with effects planted in both directions
and with none, `not measured` where the sweep lacks what a finding needs, and findings.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import findings as fd

N = 40
PLANTED = {"up": 1.0, "down": -1.0, "none": 0.0}  # log10 effects planted; noise has sd 0.1


def noise(seed: int, n: int = N) -> np.ndarray:
    """Symmetric noise (each draw with its negative, shuffled): a planted "none" has median 0."""
    half = np.random.default_rng(seed).normal(0.0, 0.1, n // 2)
    return np.random.default_rng(seed + 1).permutation(np.r_[half, -half])


def expected(direction: str, paper: int) -> str:
    """The verdict a planted effect should get when the paper found the sign `paper`."""
    if direction == "none":
        return "inconclusive"
    return "reproduced" if PLANTED[direction] * paper > 0 else "contradicted"


@pytest.mark.parametrize("direction", PLANTED)
def test_train_below_test(direction):
    ids = [f"n{i}" for i in range(N)]
    test = 10 ** np.random.default_rng(1).normal(0, 1, N)
    train = test * 10 ** (PLANTED[direction] + noise(2))
    scores = pd.DataFrame({"network_id": ids * 2, "checkpoint": "end", "metric": "jacobian_softmax",
                           "split": ["test"] * N + ["train"] * N, "mean": np.r_[test, train]})
    found = fd.train_below_test(scores, set(ids))
    assert found.verdict == expected(direction, -1) and found.n == N
    assert found.effect == pytest.approx(np.median(np.log10(train / test)))


def trajectories(dip_end: float, dip_init: float, same_vs_other: float) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(3)
    for i in range(N):
        for checkpoint, dip in (("init", dip_init), ("end", dip_end)):
            for kind in ("random", "different_class", "same_class"):
                for ellipse in range(2):
                    for position in range(9):
                        anchor = position % 3 == 0
                        level = 10 ** (dip * anchor + rng.normal(0, 0.05))
                        density = 10 * 10 ** (same_vs_other * (kind == "same_class")) * (1 + rng.normal(0, 0.05))
                        rows.append((f"n{i}", checkpoint, kind, ellipse, position, anchor, level, density))
    return pd.DataFrame(rows, columns=["network_id", "checkpoint", "kind", "ellipse", "position", "anchor",
                                       "jacobian_softmax", "transition_density"])


@pytest.mark.parametrize("direction", PLANTED)
def test_dips_at_anchors_and_same_class_transitions(direction):
    effect = PLANTED[direction]
    table = trajectories(dip_end=effect, dip_init=0.0, same_vs_other=effect)
    ids = {f"n{i}" for i in range(N)}
    dip = fd.dips_at_anchors(table, ids)
    assert dip.verdict == expected(direction, -1) and dip.effect == pytest.approx(effect, abs=0.05)
    same = fd.same_class_fewer_transitions(table, ids)
    assert same.verdict == expected(direction, -1)
    # Planted at init too: the note gives init's median, so a reader sees how much training added.
    at_init = float(same.note.split("at init the same median is ")[1].split(",")[0])
    assert at_init == pytest.approx(same.effect, abs=0.02)
    # A dip that is there at init already is no effect of training.
    assert fd.dips_at_anchors(trajectories(-1.0, -1.0, 0.0), ids).verdict == "inconclusive"


def paired_wide(column: str, good: object, bad: object, effect: float) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    base = 10 ** rng.normal(0, 1, N)
    rows = pd.DataFrame({"network_id": [f"n{i}" for i in range(2 * N)], "status": "converged", "dataset": "digits",
                         "seed": np.r_[np.arange(N), np.arange(N)], "width": 32, "depth": 2, "activation": "relu",
                         "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 64, "full_batch": False,
                         "random_label_fraction": 0.0, "augmentation": False, "init": "torch_default",
                         "train_size": 1000, "gap": 0.1})
    rows[column] = [good] * N + [bad] * N
    rows["jacobian_softmax"] = np.r_[base, base * 10 ** (effect + noise(5))]
    return rows


@pytest.mark.parametrize("direction", PLANTED)
@pytest.mark.parametrize("column,good,bad", [("random_label_fraction", 0.0, 0.5), ("augmentation", True, False),
                                             ("full_batch", False, True), ("activation", "relu", "tanh")])
def test_paired_findings(direction, column, good, bad):
    found = fd.paired(paired_wide(column, good, bad, PLANTED[direction]), column)
    assert found.verdict == expected(direction, +1) and found.n == N
    # Without the factor's two levels: not measured, saying which grid factor would measure it.
    alone = fd.paired(paired_wide(column, good, good, 0.0), column)
    assert alone.verdict == "not measured" and "grid" in alone.note and alone.effect is None
    # The grid has the pairs, but the protocol left one side of each out: it says so, not "add it".
    every = paired_wide(column, good, bad, PLANTED[direction])
    broken = fd.paired(every[every[column] == good], column, every)
    assert broken.verdict == "not measured" and broken.note.startswith(f"the grid has {N} pair(s), but none with both "
                                                                       "networks in the statistics"), broken.note


@pytest.mark.parametrize("interval,verdict", [((0.2, 0.6), "reproduced"), ((-0.6, -0.2), "contradicted"),
                                              ((-0.2, 0.3), "inconclusive")])
def test_correlation_findings_use_the_correlations_interval(interval, verdict):
    rows = pd.DataFrame([{"dataset": "digits", "metric": "jacobian_softmax", "target": "gap", "n": 30,
                          "rho": sum(interval) / 2, "rho_lo": interval[0], "rho_hi": interval[1], "note": ""}])
    found = fd.ranks_gap(rows, "jacobian_softmax", "jacobian_ranks_gap", "claim")
    assert (found.verdict, found.ci_low, found.ci_high, found.n) == (verdict, *interval, 30)
    assert fd.ranks_gap(rows, "transitions", "transitions_ranks_gap", "claim").verdict == "not measured"


def test_bigger_networks_generalize_better_expects_a_negative_correlation():
    rows = pd.DataFrame([{"dataset": "digits", "metric": "param_count", "target": "gap", "n": 30,
                          "rho": -0.4, "rho_lo": -0.6, "rho_hi": -0.2, "note": ""}])
    found = fd.ranks_gap(rows, "param_count", "bigger_networks_generalize_better", "claim", expected=-1)
    assert found.verdict == "reproduced"
    assert fd.ranks_gap(rows.assign(rho=0.4, rho_lo=0.2, rho_hi=0.6), "param_count", "id", "claim",
                        expected=-1).verdict == "contradicted"


def test_train_loss_against_the_jacobian_over_too_few_networks_to_resample():
    # Three networks: ρ is defined, most resamples repeat one and have none.
    wide = pd.DataFrame({"gap": [0.1, 0.2, 0.3], "jacobian_softmax": [1.0, 3.0, 2.0], "train_loss": [0.3, 0.1, 0.2]})
    found = fd.train_loss_tracks_less(wide)
    rho_j, rho_loss = (stats.spearmanr(wide[m], wide["gap"]).statistic for m in ("jacobian_softmax", "train_loss"))
    assert found.effect == pytest.approx(rho_j - abs(rho_loss)) and found.verdict == "inconclusive"
    assert found.note.startswith("no interval (bootstrap interval undefined: ") and "constant" in found.note


@pytest.mark.parametrize("tracks,verdict", [("jacobian_softmax", "reproduced"), ("train_loss", "contradicted"),
                                            ("-train_loss", "contradicted")])
def test_train_loss_against_the_jacobian_with_a_paired_bootstrap(tracks, verdict):
    # "-train_loss": a train loss that falls as the gap grows tracks it too

    rng = np.random.default_rng(7)
    gap = rng.random(N)
    wide = pd.DataFrame({"gap": gap, "jacobian_softmax": rng.random(N), "train_loss": rng.random(N)})
    wide[tracks.lstrip("-")] = (-1 if tracks.startswith("-") else 1) * (gap + rng.normal(0, 0.1, N))
    found = fd.train_loss_tracks_less(wide)
    j, loss = wide["jacobian_softmax"].to_numpy(), wide["train_loss"].to_numpy()

    def difference(a, b, c):
        return stats.spearmanr(a, c).statistic - abs(stats.spearmanr(b, c).statistic)

    reference = stats.bootstrap((j, loss, gap), difference, paired=True, vectorized=False, n_resamples=fd.N_RESAMPLES,
                                method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert found.effect == pytest.approx(difference(j, loss, gap), abs=1e-12) and found.n == N
    assert (found.ci_low, found.ci_high) == (pytest.approx(reference.low, abs=1e-12),
                                             pytest.approx(reference.high, abs=1e-12))
    assert found.verdict == verdict
    assert fd.train_loss_tracks_less(wide.drop(columns="jacobian_softmax")).verdict == "not measured"


def test_without_a_bootstrap_a_correlation_shows_no_empty_interval():
    rows = pd.DataFrame([{"dataset": "digits", "metric": "jacobian_softmax", "target": "gap", "n": 30,
                          "rho": 0.85, "rho_lo": np.nan, "rho_hi": np.nan, "note": ""}])
    found = fd.ranks_gap(rows, "jacobian_softmax", "jacobian_ranks_gap", "claim")
    assert found.verdict == "inconclusive" and "--no-bootstrap" in found.note
    shown = fd.markdown_rows([found]).iloc[0]
    assert shown["effect [95% CI]"] == "+0.850" and shown["verdict"].startswith("inconclusive: no interval")
    # a bootstrap that ran but left no interval says so, not that it was never asked for
    why = "bootstrap interval undefined: 90 of 1000 resamples drew a constant column (more than 5%)"
    found = fd.ranks_gap(rows.assign(note=f"excluded 2 diverged/failed; {why}"), "jacobian_softmax", "id", "claim")
    assert found.verdict == "inconclusive" and found.note == f"no interval ({why})"


@pytest.mark.parametrize("sign,noise_sd,verdict", [(+1, 0.3, "reproduced"), (-1, 0.3, "contradicted"),
                                                     (+1, 30.0, "inconclusive")])
def test_without_a_bootstrap_a_correlation_has_its_verdict_from_its_test(sign, noise_sd, verdict):
    from analysis.correlations import correlations
    rng = np.random.default_rng(5)
    gap = rng.random(N)
    wide = pd.DataFrame({"gap": gap, "jacobian_softmax": sign * gap + rng.normal(0, noise_sd, N)})
    rows = correlations(wide, metrics=["jacobian_softmax"], targets=("gap",), by=None, bootstrap=False)
    found = fd.ranks_gap(rows, "jacobian_softmax", "jacobian_ranks_gap", "claim")
    reference = stats.spearmanr(wide["jacobian_softmax"], gap)
    assert found.effect == pytest.approx(reference.statistic, abs=1e-12) and found.ci_low is None
    assert (reference.pvalue < fd.ALPHA) == (verdict != "inconclusive") and found.verdict == verdict
    assert found.note == f"no interval (the report was written with --no-bootstrap); the verdict rests on " \
                         f"p(ρ) = {reference.pvalue:.2g} alone"


@pytest.mark.parametrize("auroc,verdict", [(0.8, "reproduced"), (0.2, "contradicted"), (0.5, "inconclusive")])
def test_per_point_auroc_against_no_skill(auroc, verdict):
    per_point = pd.DataFrame({"network_id": [f"n{i}" for i in range(N)], "metric": "jacobian_softmax",
                              "auroc": auroc + noise(6) / 2})
    assert fd.predicts_errors(per_point).verdict == verdict


def test_findings_json_has_the_keys_and_nulls_for_what_was_not_measured(tmp_path):
    empty = pd.DataFrame(columns=["network_id", "checkpoint", "kind", "ellipse", "position", "anchor",
                                  "jacobian_softmax", "transition_density"])
    found = [fd.dips_at_anchors(empty, set()), fd.predicts_errors(pd.DataFrame(columns=["metric", "auroc"]))]
    fd.write_json(found, tmp_path / "findings.json")
    records = json.loads((tmp_path / "findings.json").read_text())
    assert [tuple(r) for r in records] == [fd.JSON_KEYS] * 2
    assert all(r["verdict"] == "not measured" and r["effect"] is None for r in records)


def test_unscored_networks_are_not_measured_for_want_of_scoring_not_of_grid_keys():
    from analysis import correlations, per_point
    from analysis.columns import SCORE_COLUMNS, TRAJECTORY_COLUMNS
    from analysis.tables import empty_frame

    wide = pd.DataFrame({"network_id": ["a", "b"], "random_label_fraction": [0.0, 0.5], "status": "converged",
                         "gap": [0.1, 0.2], "loss_gap": [0.3, 0.4]})
    scores, trajectories = empty_frame(SCORE_COLUMNS), empty_frame(TRAJECTORY_COLUMNS)
    found = fd.findings(wide, scores, trajectories, correlations(wide, metrics=[], by=None),
                        per_point(pd.DataFrame(columns=["checkpoint", "split"])))
    assert {f.verdict for f in found} == {"not measured"}
    assert all("score them with `sweep score PATH`" in f.note for f in found), [f.note for f in found]
    # Scores at init only (those at the end not yet made, or made with other settings and set aside): the same.
    at_init = pd.DataFrame({"network_id": ["a", "b"], "checkpoint": "init", "split": "test", "metric": "loss",
                            "mean": 1.0})
    found = fd.findings(wide, at_init, trajectories, correlations(wide, metrics=[], by=None),
                        per_point(pd.DataFrame(columns=["checkpoint", "split"])))
    assert all("no `end` checkpoint of these networks has scores of the sweep's scoring settings yet; score them "
               "with `sweep score PATH`" in f.note for f in found), [f.note for f in found]
    # Once scores exist, each finding's own advice stands (here: the grid has no random labels).
    scored = pd.DataFrame({"network_id": ["a"], "checkpoint": "end", "split": "test", "metric": "loss", "mean": 1.0})
    found = fd.findings(wide.assign(random_label_fraction=0.0), scored, trajectories,
                        correlations(wide, metrics=[], by=None), per_point(pd.DataFrame(columns=["checkpoint", "split"])))
    assert "add random_label_fractions" in next(f for f in found if f.id == "random_labels_raise_jacobian").note
    # No network in the statistics: that, not the spec, is why nothing is measured.
    found = fd.findings(wide.iloc[:0], scored, trajectories, correlations(wide.iloc[:0], metrics=[], by=None),
                        per_point(pd.DataFrame(columns=["checkpoint", "split"])))
    assert {f.verdict for f in found} == {"not measured"}
    assert all(f.note.startswith("no network is in the statistics") and "--include-unconverged" in f.note
               for f in found), [f.note for f in found]


def test_a_handful_of_networks_needs_its_test_as_well_as_its_interval():
    # Four networks ranked perfectly: every bootstrap resample ranks them perfectly too ([1, 1]),
    # yet 2 of the 4! pairings do as well (p = 0.083).
    rows = pd.DataFrame([{"dataset": "digits", "metric": "jacobian_softmax", "target": "gap", "n": 4,
                          "rho": 1.0, "rho_lo": 1.0, "rho_hi": 1.0, "rho_p": 2 / 24, "note": ""}])
    found = fd.ranks_gap(rows, "jacobian_softmax", "jacobian_ranks_gap", "claim")
    assert found.verdict == "inconclusive" and "p = 0.083" in found.note and "over 4" in found.note
    assert fd.ranks_gap(rows.assign(rho_p=0.01), "jacobian_softmax", "id", "claim").verdict == "reproduced"
    # A median of three values all above no effect: the signed-rank test's p is 2/2³ = 0.25.
    three = fd.median_effect("id", "claim", "scale", np.array([0.2, 0.5, 0.9]), 0.0, +1)
    assert (three.ci_low > 0, three.verdict) == (True, "inconclusive") and "p = 0.25" in three.note
    ten = np.linspace(0.1, 1.0, 10)

    assert stats.wilcoxon(ten).pvalue < fd.ALPHA
    assert fd.median_effect("id", "claim", "scale", ten, 0.0, +1).verdict == "reproduced"
