"""Scoring checkpoints: the batched computation against per-network float64 references, faults
recorded as rows, and the Ray actor pool (replacing a killed actor without duplicating rows)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs
import pytest
import torch
import torch.nn.functional as F
from live_bytes import LiveBytes

import metrics_core as mc
import sweep.scoring.measure
import sweep.scoring.table_writer
from sweep.plan import planner
from sweep.plan.datasets import DATASETS
from sweep.plan.networks import BundleConfig, NetworkConfig
from sweep.plan.schema import SpecError
from sweep.plan.spec import Budget, DataSpec
from sweep.scoring.inputs import fixed_points, scoring_inputs
from sweep.scoring.measure import score_checkpoint, score_checkpoints
from sweep.scoring.scorer import Scorer, load_checkpoint
from sweep.scoring.settings import ScoringSettings
from sweep.scoring.table_writer import SCHEMAS, TableWriter
from sweep.training.checkpoints import CheckpointError, local_size, unscored
from sweep.training.data import load_dataset
from sweep.training.models import build_network, initial_population
from sweep.training.population import PopulationTrainer, member_labels
from sweep.training.trainable import checkpoint_payload
from sweep.training.trainable import write_checkpoint as write_checkpoint_files

DIGITS = DataSpec("digits")
SETTINGS = ScoringSettings(points=24, train_points=12, transitions_k=32, ellipses_per_kind=2, profile_points=33,
                         slice_grid=16, slice_count=1)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DIGITS)


def make_bundle(activation="relu", members=3, width=16, depth=2, seed0=0) -> BundleConfig:
    return BundleConfig(
        tuple(
            NetworkConfig(
                dataset=DIGITS, width=width, depth=depth, activation=activation, optimizer="sgd",
                learning_rate=0.1, batch_size=32, random_label_fraction=0.0, augmentation=False,
                seed=seed0 + s, init="torch_default",
            )
            for s in range(members)
        )
    )


def make_nets(bundle: BundleConfig, sharpen: float = 4.0):
    """The members as built alone; the last layer scaled so softmax outputs are far from uniform."""
    nets = [build_network(member, DATASETS["digits"]) for member in bundle.members]
    with torch.no_grad():
        for net in nets:
            net[-1].weight.mul_(sharpen)
    return nets


def write_checkpoint(directory: Path, bundle: BundleConfig, nets, tag="end", statuses=None) -> Path:
    """A checkpoint in the documented layout (docs/architecture.md), built by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    mlp = mc.stack(nets)
    torch.save(
        {
            "weights": list(mlp.weights),
            "biases": list(mlp.biases),
            "activation": mlp.activation.name,
            "activation_params": dict(mlp.activation.params),
        },
        directory / "population.pt",
    )
    meta = {
        "bundle_id": bundle.bundle_id,
        "bundle": bundle.to_dict(),
        "network_ids": bundle.network_ids,
        "tag": tag,
        "step": 7,
        "epoch": 1,
        "statuses": statuses or ["converged"] * len(nets),
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def meta_of(bundle: BundleConfig, tag="end", statuses=None) -> dict:
    n = len(bundle.members)
    return {"bundle_id": bundle.bundle_id, "bundle": bundle.to_dict(), "network_ids": bundle.network_ids, "tag": tag,
            "step": 7, "statuses": statuses or ["converged"] * n}


# NaN by definition for untrained networks: no positive margin at the 10th percentile.
MARGIN_NORMALIZED = ("spectral_margin", "frobenius_margin")


def scored(*args, **kwargs) -> dict[str, pd.DataFrame]:
    """`score_checkpoint`'s tables as pandas frames."""
    return {name: table.to_pandas() for name, table in score_checkpoint(*args, **kwargs).items()}


def softmax_jacobian_norm64(net, x: torch.Tensor, logits: bool = False) -> float:
    net64 = copy.deepcopy(net).double()
    f = (lambda v: net64(v)) if logits else (lambda v: torch.softmax(net64(v), -1))
    return torch.autograd.functional.jacobian(f, x.double()).norm().item()


def brute_force_transitions(net, x, p1, p2, k) -> int:
    """Units changing piece between neighbours on the ellipse through x, p1, p2, one point at a time."""
    m = (x + p1 + p2) / 3
    u, v = m - p1, (x - p2) / math.sqrt(3)
    codes = []
    for i in range(k):
        theta = math.pi / 3 + 2 * math.pi * i / k  # from x, the first anchor (SPEC: x at θ = π/3)
        h, code = m + u * math.cos(theta) + v * math.sin(theta), []
        for module in net:
            h = module(h) if isinstance(module, torch.nn.Linear) else h
            if isinstance(module, torch.nn.ReLU):
                code.append(h > 0)
                h = torch.relu(h)
        codes.append(torch.cat(code))
    return sum(int((codes[i] != codes[(i + 1) % k]).sum()) for i in range(k))


# --- the pure computation -------------------------------------------------------------------


def test_scores_match_each_network_recomputed_alone_in_float64(data):
    bundle = make_bundle()
    nets = make_nets(bundle)
    frames = scored(mc.stack(nets), meta_of(bundle), data, SETTINGS)
    points, scores = frames["points"], frames["scores"]
    assert len(points) == 3 * SETTINGS.points
    for network_id, net in zip(bundle.network_ids, nets):
        mine = points[points.network_id == network_id]
        index = torch.as_tensor(mine.point_index.to_numpy(copy=True))
        x = data.x_test[index]
        reference = [softmax_jacobian_norm64(net, xi) for xi in x]
        np.testing.assert_allclose(mine.jacobian_softmax, reference, rtol=1e-4)
        np.testing.assert_allclose(mine.jacobian_logits, [softmax_jacobian_norm64(net, xi, logits=True) for xi in x], rtol=1e-4)
        with torch.no_grad():
            logits = copy.deepcopy(net).double()(x.double())
        y = data.y_test[index]
        np.testing.assert_allclose(mine.loss, F.cross_entropy(logits, y, reduction="none"), rtol=1e-4)
        assert (mine.prediction.to_numpy() == logits.argmax(1).numpy()).all()
        own = scores[(scores.network_id == network_id) & (scores.split == "test")].set_index("metric")
        assert own.loc["jacobian_softmax", "mean"] == pytest.approx(np.mean(reference), rel=1e-4)
        assert own.loc["accuracy", "mean"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
        true = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], -math.inf).amax(1)
        assert own.loc["margin", "mean"] == pytest.approx((true - others).mean().item(), rel=1e-4)


def test_score_statistics_agree_with_pandas_over_the_points(data):
    bundle = make_bundle(members=2)
    frames = scored(mc.stack(make_nets(bundle)), meta_of(bundle), data, SETTINGS)
    scores = frames["scores"].query("split == 'test'").set_index(["network_id", "metric"])
    by_network = frames["points"].groupby("network_id")
    for metric in ("jacobian_softmax", "jacobian_logits", "transitions", "loss"):
        for network_id, group in by_network:
            row = scores.loc[(network_id, metric)]
            assert row["mean"] == pytest.approx(group[metric].mean(), rel=1e-12)
            assert row["median"] == pytest.approx(group[metric].median(), rel=1e-12)
            assert row["std"] == pytest.approx(group[metric].std(), rel=1e-9)
            assert row["n_points"] == len(group) == SETTINGS.points
    train = frames["scores"].query("split == 'train'")
    assert set(train.n_points) == {SETTINGS.train_points}


def test_weight_measures_match_direct_computation(data):
    bundle = make_bundle(members=2, depth=3)
    nets = make_nets(bundle)
    scores = scored(mc.stack(nets), meta_of(bundle), data, SETTINGS)["scores"]
    weights = scores[scores.split == "weights"].set_index(["network_id", "metric"])
    for network_id, net in zip(bundle.network_ids, nets):
        mats = [m.weight.detach().double() for m in net if isinstance(m, torch.nn.Linear)]
        expected = {
            "param_count": sum(p.numel() for p in net.parameters()),
            "weight_norm_sq": sum(float((w**2).sum()) for w in mats),
            "spectral_product": math.prod(float(torch.linalg.matrix_norm(w, 2)) for w in mats),
        }
        for metric, value in expected.items():
            row = weights.loc[(network_id, metric)]
            assert row["mean"] == pytest.approx(value, rel=1e-5) and row["median"] == row["mean"]
            assert math.isnan(row["std"]) and row["n_points"] == 0


def test_transitions_match_a_brute_force_walk_along_the_ellipse(data):
    bundle = make_bundle(members=2)
    nets = make_nets(bundle)
    frames = scored(mc.stack(nets), meta_of(bundle), data, SETTINGS)
    test = scoring_inputs(data, SETTINGS).probes[0]
    assert not (test.partners == test.x[:, None]).all(-1).any()  # partners are other points
    mine = frames["points"][frames["points"].network_id == bundle.network_ids[1]]
    for i in range(4):
        expected = brute_force_transitions(nets[1], test.x[i], test.partners[i, 0], test.partners[i, 1], SETTINGS.transitions_k)
        assert mine.transitions.iloc[i] == expected


def test_circle_transitions_record_that_they_pass_through_the_point(data):
    bundle = make_bundle(members=2)
    nets = make_nets(bundle)
    settings = SETTINGS.replace(trajectory="circle", circle_radius=0.5, metrics=("transitions",))
    scores = scored(mc.stack(nets), meta_of(bundle), data, settings)["scores"]
    rows = scores[(scores.split == "test") & (scores.metric == "transitions")]
    assert set(rows["params"]) == {'{"k": 32, "trajectory": "circle", "radius": 0.5, "through": "point"}'}
    assert rows["mean"].notna().all() and (rows["mean"] > 0).all()


def test_smooth_networks_have_nan_transitions_never_zero(data):
    bundle = make_bundle(activation="tanh", members=2)
    frames = scored(mc.stack(make_nets(bundle)), meta_of(bundle), data, SETTINGS.replace(slices=True))
    transitions = frames["scores"][frames["scores"].metric == "transitions"]
    assert len(transitions) == 4 and transitions["mean"].isna().all() and (transitions.status == "ok").all()
    assert frames["points"].transitions.isna().all() and frames["points"].jacobian_softmax.notna().all()
    assert frames["slices"].region.isna().all()  # no linear regions for tanh: recorded as missing


def test_non_finite_weights_give_nan_metrics_and_leave_the_others_unchanged(data):
    bundle = make_bundle(members=3)
    nets = make_nets(bundle)
    with torch.no_grad():
        nets[1][0].weight[0, 0] = float("nan")
    statuses = ["converged", "diverged", "budget"]
    frames = scored(mc.stack(nets), meta_of(bundle, statuses=statuses), data, SETTINGS)
    scores, points = frames["scores"], frames["points"]
    bad = scores[scores.network_id == bundle.network_ids[1]]
    assert bad["mean"].isna().all() and (bad.status == "ok").all()
    assert bad.message.str.contains("network diverged").all()
    assert points[points.network_id == bundle.network_ids[1]].prediction.isna().all()
    healthy = BundleConfig((bundle.members[0], bundle.members[2]))
    alone = scored(mc.stack([nets[0], nets[2]]), meta_of(healthy), data, SETTINGS)["scores"]
    good = scores[scores.network_id != bundle.network_ids[1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(good.sort_values(["network_id", "split", "metric"], ignore_index=True),
                                  alone.sort_values(["network_id", "split", "metric"], ignore_index=True))


def test_members_with_identical_weights_are_computed_once_and_scored_alike(data, monkeypatch):
    # At initialisation members differing only in learning rate or labels share their weights.
    bundle = make_bundle(members=2)
    a, b = make_nets(bundle)
    nets = [a, copy.deepcopy(b), copy.deepcopy(a), b]
    members = BundleConfig((*bundle.members, *(dataclasses.replace(m, learning_rate=0.03) for m in bundle.members)))
    settings = SETTINGS.replace(trajectories=True, slices=True)
    computed = []
    real = mc.jacobian_norms

    def counting(net, x, *args, **kwargs):
        computed.append(net.num_models)
        return real(net, x, *args, **kwargs)

    monkeypatch.setattr(mc, "jacobian_norms", counting)
    frames = scored(mc.stack(nets), meta_of(members, tag="init"), data, settings)
    assert computed == [2, 2]  # test and train points, two distinct networks each time
    alone = scored(mc.stack([a, b]), meta_of(bundle, tag="init"), data, settings)
    for name in ("scores", "points", "trajectories", "slices"):
        ours, theirs = frames[name], alone[name]
        for copy_of, original in ((2, 0), (1, 1), (3, 1), (0, 0)):
            mine = ours[ours.network_id == members.network_ids[copy_of]].drop(columns="network_id")
            reference = theirs[theirs.network_id == bundle.network_ids[original]].drop(columns="network_id")
            pd.testing.assert_frame_equal(mine.reset_index(drop=True), reference.reset_index(drop=True))


def test_one_failing_network_is_recorded_and_the_others_are_scored(data, monkeypatch, caplog):
    bundle = make_bundle(members=3)
    nets = make_nets(bundle)
    with torch.no_grad():
        nets[2][0].bias[0] = 123.0  # marks the member the injected fault hits
    real = mc.margin

    def margin_failing_on_the_marked_member(net, x, y, **kwargs):
        if (net.biases[0][:, 0] == 123.0).any():
            raise RuntimeError("injected fault")
        return real(net, x, y, **kwargs)

    monkeypatch.setattr(mc, "margin", margin_failing_on_the_marked_member)
    scores = scored(mc.stack(nets), meta_of(bundle), data, SETTINGS)["scores"]
    failed = scores[scores.status == "failed"]
    assert set(failed.network_id) == {bundle.network_ids[2]} and failed["mean"].isna().all()
    assert failed.message.str.contains("RuntimeError: injected fault").all()
    ok = scores[(scores.status == "ok") & ~scores.metric.isin(MARGIN_NORMALIZED)]
    assert len(ok) and ok["mean"].notna().all()
    # The fallback to one member at a time is logged, so a bug in the batched route is visible.
    assert "scoring the 3 members together raised RuntimeError: injected fault" in caplog.text


def test_several_checkpoints_scored_together_equal_each_scored_alone(data, monkeypatch):
    # Two shapes, init (profiles and slices) and end checkpoints, a diverged member and two
    # members with identical weights: one stacked call per shape and kind of checkpoint.
    settings = SETTINGS.replace(trajectories=True, slices=True)
    small, other, wide = make_bundle(members=2), make_bundle(members=3, seed0=10), make_bundle(members=2, width=24)
    nets = {b.bundle_id: make_nets(b) for b in (small, other, wide)}
    with torch.no_grad():
        nets[other.bundle_id][1][0].weight.fill_(float("nan"))
        for new, old in zip(nets[other.bundle_id][2].parameters(), nets[other.bundle_id][0].parameters()):
            new.copy_(old)
    checkpoints = [(mc.stack(nets[b.bundle_id]), meta_of(b, tag)) for b, tag in
                   ((small, "end"), (other, "end"), (wide, "end"), (small, "init"), (wide, "epoch-000004"))]
    calls = []
    real = sweep.scoring.measure._measure
    monkeypatch.setattr(sweep.scoring.measure, "_measure", lambda members, *a: calls.append(members.net.num_models) or real(members, *a))
    together = score_checkpoints(checkpoints, data, settings)
    # 16×2 end checkpoints: 2 + (3 - diverged - copy) = 3; 16×2 init (no train-point measures): 2;
    # 24×2 end: 2; 24×2 epoch checkpoint (no profiles): 2.
    assert sorted(calls) == [2, 2, 2, 3]
    calls.clear()
    for (population, meta), tables in zip(checkpoints, together):
        alone = score_checkpoint(population, meta, data, settings)
        for name in tables:
            pd.testing.assert_frame_equal(tables[name].to_pandas(), alone[name].to_pandas(), rtol=1e-5, check_exact=False)


def test_profiles_and_slices_only_at_init_and_end(data):
    bundle = make_bundle(members=2)
    nets = make_nets(bundle)
    settings = SETTINGS.replace(trajectories=True, slices=True)
    tables = score_checkpoint(mc.stack(nets), meta_of(bundle, tag="end"), data, settings)
    for name, table in tables.items():  # every table has its documented schema
        assert table.schema.equals(SCHEMAS[name]), name
    end = {name: table.to_pandas() for name, table in tables.items()}
    k, e = settings.profile_points, settings.ellipses_per_kind
    trajectories = end["trajectories"]
    assert len(trajectories) == 2 * 3 * e * k
    assert set(trajectories.kind) == {"random", "different_class", "same_class"}
    assert trajectories[["jacobian_softmax", "transition_density"]].notna().all().all()
    # Every ellipse passes through its three anchors exactly, at positions 0, k/3, 2k/3: there the
    # Jacobian norm is that of the training point itself.
    anchors = trajectories[trajectories.anchor]
    assert sorted(set(anchors.position)) == [0, k // 3, 2 * k // 3] and len(anchors) == 2 * 3 * e * 3
    ellipses = scoring_inputs(data, settings).ellipses
    train = {tuple(row.tolist()) for row in data.x_train}
    for kind in ("different_class", "same_class"):
        for row in anchors[anchors.kind == kind].itertuples():
            point = ellipses[kind][row.ellipse, row.position]
            assert tuple(point.tolist()) in train
            net = nets[bundle.network_ids.index(row.network_id)]
            assert row.jacobian_softmax == pytest.approx(mc.jacobian_norms(net, point[None]).item(), rel=1e-5)
    assert len(end["slices"]) == 2 and all(len(r) == 16 * 16 for r in end["slices"].region)
    assert all(len(a) == 6 for a in end["slices"].anchors)
    middle = scored(mc.stack(nets), meta_of(bundle, tag="epoch-000010"), data, settings)
    assert middle["trajectories"].empty and middle["slices"].empty


def test_fixed_points_are_a_function_of_the_seed():
    a, b = fixed_points(1000, 50, seed=3), fixed_points(1000, 50, seed=3)
    assert (a == b).all() and len(np.unique(a)) == 50 and a.max() < 1000
    assert not (fixed_points(1000, 50, seed=4) == a).all()
    assert (fixed_points(30, 50, seed=3) == np.arange(30)).all()


def test_slice_anchors_span_a_plane_where_the_images_repeat(data):
    # Every other training image a copy of the first: a triple with two copies would fail every
    # network's slice, so it is drawn again.
    x = data.x_train.clone()
    x[::2] = x[0]
    copies = dataclasses.replace(data, x_train=x)
    settings = SETTINGS.replace(slices=True, slice_count=12)
    anchors = scoring_inputs(copies, settings).slice_anchors
    assert anchors.shape == (12, 3, x.shape[1])
    for a, b, c in anchors:
        mc.slices.plane(a, b, c)  # raises where they do not span a plane
    assert torch.equal(scoring_inputs(data, settings).slice_anchors, scoring_inputs(data, settings).slice_anchors)
    # Nothing but copies: said before any network is scored; without slices, nothing to say.
    same = dataclasses.replace(data, x_train=data.x_train[:1].expand(len(data.x_train), -1))
    with pytest.raises(ValueError, match="no three of the 1297 training points spanning a plane.*scoring.slices: false"):
        scoring_inputs(same, settings)
    assert scoring_inputs(same, settings.replace(slices=False)).slice_anchors.shape == (0, 3, x.shape[1])


def test_transition_partners_are_other_images_where_the_images_repeat(data):
    # Every other test image a copy of the first: an ellipse through two copies folds onto a segment.
    x = data.x_test.clone()
    x[::2] = x[0]
    probe = scoring_inputs(dataclasses.replace(data, x_test=x), SETTINGS.replace(points=200)).probes[0]
    assert not (probe.partners == probe.x[:, None]).all(-1).any()
    assert not (probe.partners[:, 0] == probe.partners[:, 1]).all(-1).any()
    # Without copies the draws are what they were: the same points, partners and later draws.
    plain = scoring_inputs(data, SETTINGS).probes[0]
    index = torch.as_tensor(plain.index)
    generator = torch.Generator().manual_seed(SETTINGS.seed)
    assert torch.equal(plain.partners, data.x_test[sweep.scoring.inputs._partner_indices(index, len(data.x_test),
                                                                                         generator)])


def test_a_train_split_without_three_points_of_a_class_is_named(data):
    # Eight points of distinct classes, where same-class ellipses need three of one class.
    first = [int(torch.nonzero(data.y_train == c)[0]) for c in range(8)]
    few = dataclasses.replace(data, x_train=data.x_train[first], y_train=data.y_train[first])
    with pytest.raises(ValueError, match="same-class ellipses need a class with 3 training points; the train split's 8"):
        scoring_inputs(few, SETTINGS.replace(trajectories=True, train_points=3))


def test_settings_from_a_plan_and_their_errors():
    assert ScoringSettings.from_dict(dataclasses.asdict(ScoringSettings())) == ScoringSettings()
    assert ScoringSettings.from_dict({"points": 10}).points == 10
    with pytest.raises(SpecError, match=r"^scoring.metrics\[0\]: unknown value 'jacobian'; choose one of "
                                        r"jacobian_softmax, jacobian_logits"):
        ScoringSettings().replace(metrics=("jacobian",))
    with pytest.raises(SpecError, match=r"^scoring.points: expected a positive integer, got 0"):
        ScoringSettings().replace(points=0)
    with pytest.raises(SpecError, match=r"^scoring.color: unknown key; allowed keys: chunk_size, circle_radius"):
        ScoringSettings.from_dict({"color": 1})
    with pytest.raises(ValueError, match="points"):  # built directly, the model still checks
        ScoringSettings(points=0)


# --- checkpoints, the scorer and the tables ----------------------------------------------------


def test_checkpoint_round_trip_and_corrupt_files(tmp_path):
    bundle = make_bundle(members=2)
    nets = make_nets(bundle)
    directory = write_checkpoint(tmp_path / "ckpt", bundle, nets)
    population, meta = load_checkpoint(str(directory))
    for got, expected in zip(population.weights, mc.stack(nets).weights):
        assert torch.equal(got, expected)
    assert meta["network_ids"] == bundle.network_ids
    (directory / "population.pt").write_bytes((directory / "population.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"cannot load {directory}/population.pt"):
        load_checkpoint(directory)
    torch.save({"weights": [torch.nn.Linear(2, 2)]}, directory / "population.pt")  # not weights_only-safe
    with pytest.raises(CheckpointError, match="population.pt"):
        load_checkpoint(directory)
    with pytest.raises(CheckpointError, match=f"{tmp_path}/missing/meta.json is missing"):
        load_checkpoint(tmp_path / "missing")


def test_each_network_is_scored_at_its_own_step(tmp_path, data):
    # The diverged member stopped in its first epoch (its steps end with its first non-finite loss)
    # and keeps that epoch's weights; its rows say its steps, as its `networks` row does.
    first = make_bundle(members=1).members[0]
    bundle = BundleConfig((first, dataclasses.replace(first, learning_rate=1e30)))
    trainer = PopulationTrainer(bundle, data, Budget(max_epochs=3, stop_at_full_train_acc=False))
    while not trainer.done:
        trainer.train_epoch()
    assert trainer.status == ["budget", "diverged"]
    (tmp_path / "end").mkdir()
    write_checkpoint_files(tmp_path / "end", *checkpoint_payload(trainer, bundle, "end"))
    population, meta = load_checkpoint(tmp_path / "end")
    scores = scored(population, meta, data, SETTINGS)["scores"]
    steps = scores.groupby("network_id")["step"].unique()
    expected = {row["network_id"]: row["steps"] for row in trainer.network_rows()}
    assert 0 < expected[bundle.network_ids[1]] < trainer.steps_per_epoch
    assert expected[bundle.network_ids[0]] == trainer.steps
    assert {i: list(s) for i, s in steps.items()} == {i: [n] for i, n in expected.items()}


@pytest.mark.parametrize("edit", ["learning_rate", "network_ids", "bundle_id", "network_steps"])
def test_a_hand_edited_meta_json_is_refused(edit, tmp_path):
    bundle = make_bundle(members=2)
    directory = write_checkpoint(tmp_path / "ckpt", bundle, make_nets(bundle))
    meta = json.loads((directory / "meta.json").read_text())
    if edit == "learning_rate":
        meta["bundle"]["members"][1]["learning_rate"] *= 10
    elif edit == "network_ids":
        meta["network_ids"] = meta["network_ids"][::-1]
    elif edit == "network_steps":
        meta["network_steps"] = [meta["step"]]  # one for two networks
    else:
        meta["bundle_id"] = "0" * 16
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{directory}/meta.json does not match itself: .* edited by hand"):
        load_checkpoint(directory)


def test_a_checkpoint_in_another_bundles_folder_is_refused(tmp_path):
    bundle, other = make_bundle(members=2), make_bundle(members=2, seed0=5)
    directory = write_checkpoint(tmp_path / f"bundle-{other.bundle_id}" / "checkpoint_000001", bundle,
                                 make_nets(bundle))
    with pytest.raises(CheckpointError, match=f"belongs to bundle {bundle.bundle_id}, not to the folder "
                                              f"bundle-{other.bundle_id}"):
        load_checkpoint(directory)
    right = write_checkpoint(tmp_path / f"bundle-{bundle.bundle_id}" / "checkpoint_000001", bundle, make_nets(bundle))
    assert load_checkpoint(right)[1]["bundle_id"] == bundle.bundle_id


def test_checkpoint_size_is_its_weights_file_and_zero_when_there_is_none(tmp_path):
    from ray import tune

    bundle = make_bundle(members=2)
    directory = write_checkpoint(tmp_path / "ckpt", bundle, make_nets(bundle))
    expected = (directory / "population.pt").stat().st_size
    local = local_size(tune.Checkpoint.from_directory(str(directory)))
    assert local_size(str(directory)) == local_size(f"file://{directory}") == local == expected > 0
    assert local_size(str(tmp_path / "missing")) == local_size("unknown-scheme://bucket/ckpt") == 0
    # A file system that is not local (as an object store) is not asked, though the file is there.
    remote = pyarrow.fs._MockFileSystem()
    remote.create_dir("bucket/ckpt")
    with remote.open_output_stream("bucket/ckpt/population.pt") as stream:
        stream.write((directory / "population.pt").read_bytes())
    assert remote.get_file_info("bucket/ckpt/population.pt").size == expected
    assert local_size(tune.Checkpoint("bucket/ckpt", filesystem=remote)) == 0


def test_scorer_writes_rows_and_records_a_corrupt_checkpoint(tmp_path, data, monkeypatch):
    tables = tmp_path / "tables"
    good, bad = make_bundle(members=2), make_bundle(members=2, seed0=10)
    write_checkpoint(tmp_path / "good", good, make_nets(good))
    write_checkpoint(tmp_path / "bad", bad, make_nets(bad))
    (tmp_path / "bad" / "population.pt").write_bytes(b"not a checkpoint")
    scorer = Scorer("cpu")
    ok = scorer.score(str(tmp_path / "good"), str(tables), SETTINGS)
    failed = scorer.score(str(tmp_path / "bad"), str(tables), SETTINGS)
    assert ok["failed_members"] == 0 and ok["points"] == 2 * SETTINGS.points
    assert failed["failed_members"] == 2 and "population.pt" in failed["message"]
    scores = TableWriter(tables).read("scores")
    bad_rows = scores[scores.network_id.isin(bad.network_ids)]
    assert (bad_rows.status == "failed").all() and bad_rows.message.str.contains("bad/population.pt").all()
    assert len(bad_rows) == len(scores) // 2  # every member × split × metric is recorded
    missing = scorer.score(str(tmp_path / "nowhere"), str(tables), SETTINGS)
    assert missing["key"] is None and "nowhere/meta.json" in missing["message"]
    assert TableWriter(tables).keys("points") == [f"{good.bundle_id}--end"]
    # scored, but with failed rows: counted apart, and taken again by `sweep score`
    assert TableWriter(tables).failed_keys() == [f"{bad.bundle_id}--end"]
    found = [str(tmp_path / "good"), str(tmp_path / "bad")]
    assert unscored(tables, found) == [] and unscored(tables, found, failed=True) == [str(tmp_path / "bad")]
    # one scan of the table finds them (one dataset of every file), file by file only where a file is damaged
    opened = []
    dataset = sweep.scoring.table_writer.pads.dataset
    monkeypatch.setattr(sweep.scoring.table_writer.pads, "dataset", lambda files, **kw: opened.append(files) or
                        dataset(files, **kw))
    assert TableWriter(tables).failed_keys() == [f"{bad.bundle_id}--end"] and len(opened) == 1
    # a scores file cut short is taken again too (scoring writes it anew), and reads raise nowhere
    (tables / "scores" / f"{good.bundle_id}--end.parquet").write_bytes(b"cut short")
    assert TableWriter(tables).failed_keys() == sorted([f"{good.bundle_id}--end", f"{bad.bundle_id}--end"])
    assert len(opened) == 1 + 1 + 2  # the scan that failed, then each file


def test_checkpoints_scored_with_other_settings_are_found_and_taken_again(tmp_path, data):
    tables = tmp_path / "tables"
    first, second, legacy = make_bundle(members=2), make_bundle(members=2, seed0=10), make_bundle(members=2, seed0=20)
    found = [str(write_checkpoint(tmp_path / name, bundle, make_nets(bundle)))
             for name, bundle in (("first", first), ("second", second), ("legacy", legacy))]
    fewer = SETTINGS.replace(points=SETTINGS.points - 2)
    scorer = Scorer("cpu")
    for source, settings in zip(found, (SETTINGS, fewer, SETTINGS)):
        scorer.score(source, str(tables), settings)
    # a file written before the column was recorded: scored with whatever settings were asked
    legacy_file = tables / "scores" / f"{legacy.bundle_id}--end.parquet"
    pd.read_parquet(legacy_file).drop(columns="settings").to_parquet(legacy_file, index=False)
    recorded = pd.read_parquet(tables / "scores" / f"{first.bundle_id}--end.parquet")["settings"].unique()
    assert len(recorded) == 1
    assert json.loads(recorded[0]) == {k: sorted(v) if isinstance(v, tuple) else v
                                       for k, v in dataclasses.asdict(SETTINGS).items() if k != "chunk_size"}
    writer = TableWriter(tables)
    plan_scoring = json.loads(json.dumps(dataclasses.asdict(SETTINGS)))  # as sweep.json holds it
    assert writer.stale_keys(plan_scoring) == [f"{second.bundle_id}--end"]
    assert writer.stale_keys(dataclasses.asdict(fewer)) == [f"{first.bundle_id}--end"]
    # a setting that changes no value, or that one side does not know (added since), changes nothing
    assert writer.stale_keys({**plan_scoring, "chunk_size": 7}) == [f"{second.bundle_id}--end"]
    older = {k: v for k, v in plan_scoring.items() if k != "sharpness_target"}
    assert writer.stale_keys({**older, "a_setting_from_later": 1}) == [f"{second.bundle_id}--end"]
    # nor does the order of the metrics
    assert writer.stale_keys({**plan_scoring, "metrics": plan_scoring["metrics"][::-1]}) == [f"{second.bundle_id}--end"]
    # rows from before settings were recorded: scored with the sweep's first settings, where it has had others
    assert writer.stale_keys(plan_scoring, unrecorded=plan_scoring) == [f"{second.bundle_id}--end"]
    assert writer.stale_keys(plan_scoring, unrecorded=dataclasses.asdict(fewer)) == sorted(
        [f"{second.bundle_id}--end", f"{legacy.bundle_id}--end"])
    assert unscored(tables, found) == [] and unscored(tables, found, stale=writer.stale_keys(plan_scoring)) == [found[1]]
    # a damaged file is not said to hold other settings (failed_keys takes it), and hides no other
    (tables / "scores" / f"{first.bundle_id}--end.parquet").write_bytes(b"cut short")
    assert writer.stale_keys(plan_scoring) == [f"{second.bundle_id}--end"]
    assert writer.stale_keys(dataclasses.asdict(fewer)) == []


def test_one_bad_checkpoint_in_a_batched_call_fails_only_itself(tmp_path, data, caplog):
    # A population file that holds three networks where its meta.json lists two loads, but the
    # batched call refuses it: the checkpoints scored with it must still be scored.
    first, bad, last = make_bundle(members=2), make_bundle(members=2, seed0=10), make_bundle(members=2, seed0=20)
    sources = [str(write_checkpoint(tmp_path / "first", first, make_nets(first))),
               str(write_checkpoint(tmp_path / "bad", bad, make_nets(make_bundle(members=3, seed0=10)),
                                    statuses=["converged"] * 2)),
               str(write_checkpoint(tmp_path / "last", last, make_nets(last)))]
    summaries = Scorer("cpu").score_many(sources, str(tmp_path / "together"), SETTINGS)
    assert [s["failed_members"] for s in summaries] == [0, 2, 0]
    assert "lists 2 network_ids for 3 stacked networks" in summaries[1]["message"]
    assert "scoring 3 checkpoints together raised CheckpointError" in caplog.text
    together = TableWriter(tmp_path / "together").read("scores")
    for source in (sources[0], sources[2]):
        Scorer("cpu").score(source, str(tmp_path / "alone"), SETTINGS)
    alone = TableWriter(tmp_path / "alone").read("scores")
    ok = together[together.status != "failed"]
    key = list(ok.columns[:4])
    pd.testing.assert_frame_equal(ok.sort_values(key).reset_index(drop=True),
                                  alone.sort_values(key).reset_index(drop=True), check_categorical=False)


def test_rows_the_storage_will_not_take_leave_the_checkpoint_unscored_without_raising(tmp_path, data, monkeypatch):
    from sweep.plan import storage
    from sweep.scoring.scorer import record_failure

    tables = tmp_path / "tables"
    bundle = make_bundle(members=2)
    source = str(write_checkpoint(tmp_path / "ckpt", bundle, make_nets(bundle)))
    monkeypatch.setenv(storage.FAULT_ENV, "/scores/:ENOSPC")  # the disk fills up at the scores file
    summary = Scorer("cpu").score(source, str(tables), SETTINGS)
    assert "its rows could not be written" in summary["message"] and "No space left" in summary["message"]
    assert TableWriter(tables).keys("scores") == [] and unscored(tables, [source]) == [source]
    described = record_failure(str(tables), source, SETTINGS, "scoring actor died 3 time(s)")
    assert described.startswith(f"{bundle.bundle_id}--end: scoring actor died") and "left unscored" in described
    monkeypatch.delenv(storage.FAULT_ENV)
    assert Scorer("cpu").score(source, str(tables), SETTINGS)["message"] == ""
    assert TableWriter(tables).keys("scores") == [f"{bundle.bundle_id}--end"]


def test_a_checkpoint_the_storage_cannot_read_is_left_unscored_not_failed(tmp_path, data):
    """A read the storage refuses (here: the file's name taken by a folder, EISDIR) says nothing
    about the checkpoint, so it gets no failed rows: `sweep score` and `resume` score it later."""
    bundle = make_bundle(members=2)
    directory = write_checkpoint(tmp_path / "ckpt", bundle, make_nets(bundle))
    weights = (directory / "population.pt").read_bytes()
    (directory / "population.pt").unlink()
    (directory / "population.pt").mkdir()
    tables = str(tmp_path / "tables")
    summary = Scorer("cpu").score(str(directory), tables, SETTINGS)
    assert "the storage did not answer" in summary["message"] and "sweep score PATH" in summary["message"]
    assert TableWriter(tables).keys("scores") == [] and unscored(tables, [str(directory)]) == [str(directory)]
    (directory / "population.pt").rmdir()
    (directory / "population.pt").write_bytes(weights)
    assert Scorer("cpu").score(str(directory), tables, SETTINGS)["failed_members"] == 0
    assert unscored(tables, [str(directory)]) == []


def test_unscored_lists_checkpoints_without_scores(tmp_path):
    tables = str(tmp_path / "tables")
    first, second = make_bundle(members=2), make_bundle(members=2, seed0=5)
    a = write_checkpoint(tmp_path / "a", first, make_nets(first))
    b = write_checkpoint(tmp_path / "b", second, make_nets(second), tag="init")
    pairs = [(first.bundle_id, str(a)), (second.bundle_id, str(b))]
    assert unscored(tables, pairs) == pairs
    Scorer("cpu").score(str(a), tables, SETTINGS)
    assert unscored(tables, pairs) == [pairs[1]]
    assert unscored(tables, [str(a), str(b), str(tmp_path / "gone")]) == [str(b), str(tmp_path / "gone")]


# --- the Ray actor pool ------------------------------------------------------------------------


def priority(ray_session, actor) -> tuple[set[int], bool]:
    """The scheduling policies of an actor's threads, and whether it may leave SCHED_IDLE (root,
    or an RLIMIT_NICE that allows its nice level)."""
    def look(_):
        import resource

        nice = os.getpriority(os.PRIO_PROCESS, 0)
        allowed = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice
        return {os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}, allowed

    return ray_session.get(actor.__ray_call__.remote(look))


@pytest.mark.ray
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="scheduling classes are Linux's")
def test_cpu_actors_leave_the_background_to_drain_and_to_score_without_trials(tmp_path, ray_session):
    from sweep.scoring.actors import ScoringPool

    bundles = [make_bundle(members=1, seed0=s) for s in (0, 20, 40)]
    sources = [str(write_checkpoint(tmp_path / f"c{i}", b, make_nets(b))) for i, b in enumerate(bundles)]
    pool = ScoringPool(str(tmp_path / "tables"), SETTINGS, num_actors=1)
    actor = pool.actors()[0]
    policies, may_leave = priority(ray_session, actor)
    assert policies == {os.SCHED_IDLE}  # beside trials, from its start
    pool.submit(sources[0])  # handed out at once, while trials would still run
    pool.submit(sources[1])  # queued: the drain hands it out
    assert pool.drain(timeout=120)["done"] == 2
    drained = {os.SCHED_OTHER} if may_leave else {os.SCHED_IDLE}
    assert priority(ray_session, actor)[0] == drained
    assert ray_session.get(actor.in_background.remote()) == (not may_leave)
    pool.submit(sources[2])  # after a drain, scoring is beside trials again
    assert pool.drain(timeout=120)["done"] == 3
    assert priority(ray_session, actor)[0] == {os.SCHED_IDLE}
    pool.shutdown()

    alone = ScoringPool(str(tmp_path / "alone"), SETTINGS, num_actors=1, background=False)  # `sweep score`
    alone.submit(sources[0])
    assert alone.drain(timeout=120)["done"] == 1
    assert priority(ray_session, alone.actors()[0])[0] == {os.SCHED_OTHER}
    alone.shutdown()


@pytest.mark.ray
def test_pool_scores_like_the_scorer_and_replaces_a_killed_actor(tmp_path, ray_session):
    from sweep.scoring.actors import ScoringPool

    bundles = [make_bundle(members=2, seed0=s) for s in (0, 20, 40, 60)]
    sources = [str(write_checkpoint(tmp_path / f"c{i}", b, make_nets(b))) for i, b in enumerate(bundles)]
    reference = tmp_path / "reference"
    for source in sources:
        Scorer("cpu").score(source, str(reference), SETTINGS)

    tables = str(tmp_path / "tables")
    pool = ScoringPool(tables, SETTINGS, num_actors=2, max_retries=1)
    if hasattr(os, "SCHED_IDLE"):  # CPU actors take only the cycles trials leave, in every thread
        policies = ray_session.get(pool.actors()[0].__ray_call__.remote(
            lambda actor: {os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}))
        assert policies == {os.SCHED_IDLE}
    pool.submit(sources[0])
    assert pool.stats()["running"] == 1  # submit handed the work out and returned
    pool.drain(timeout=120)
    for source in sources[1:]:  # one for each actor; the third waits for whichever is free first
        pool.submit(source)
    assert (pool.stats()["running"], pool.stats()["queued"]) == (2, 1)
    killed = pool.actors()[0]
    ray_session.kill(killed)  # with its checkpoint in flight
    stats = pool.drain(timeout=120)
    assert (stats["done"], stats["failed"], stats["retried"], stats["replaced"]) == (4, 0, 1, 1)
    assert killed not in pool.actors()
    got, expected = TableWriter(tables), TableWriter(reference)
    for table in ("scores", "points"):
        columns = ["network_id", "split", "metric"] if table == "scores" else ["network_id", "point_index"]
        pd.testing.assert_frame_equal(
            got.read(table).sort_values(columns, ignore_index=True),
            expected.read(table).sort_values(columns, ignore_index=True),
        )
    assert got.keys("scores") == expected.keys("scores")
    pool.shutdown()


@pytest.mark.ray
def test_a_gpu_pool_hands_an_actor_what_is_queued_in_one_call(tmp_path, ray_session):
    # The session's Ray is told of 2 GPUs, or has the machine's: the actor scores on CUDA where
    # there is one, else on the CPU, and so does the reference (the PAC-Bayes measures' noise comes
    # from the scoring device's generator, so they match across devices only in distribution).
    from sweep.plan.planner import SCORING_BATCH
    from sweep.scoring.actors import ScoringPool

    device = "cuda" if torch.cuda.is_available() else "cpu"

    bundles = [make_bundle(members=2, seed0=s, width=16 + 8 * (s % 2)) for s in range(5)]
    sources = [str(write_checkpoint(tmp_path / f"c{i}", b, make_nets(b))) for i, b in enumerate(bundles)]
    sources.append(str(tmp_path / "nowhere"))  # no meta.json: recorded as failed, the others scored
    reference = tmp_path / "reference"
    for source in sources[:-1]:
        Scorer(device).score(source, str(reference), SETTINGS)
    tables = str(tmp_path / "tables")
    pool = ScoringPool(tables, SETTINGS, num_actors=1, cpus_per_actor=0, gpus_per_actor=0.5)
    pool.submit(sources[0])
    for source in sources[1:]:
        pool.submit(source)
    assert (pool.stats()["running"], pool.stats()["queued"]) == (1, 5)  # the actor holds the first
    assert SCORING_BATCH >= 5
    ray_session.wait(list(pool._running), timeout=120)
    pool.poll()  # the first is done: the five queued go out in one call
    assert (pool.stats()["running"], pool.stats()["queued"], pool.stats()["done"]) == (1, 0, 1)
    stats = pool.drain(timeout=120)
    assert (stats["done"], stats["failed"]) == (5, 1) and "nowhere" in stats["failures"][0]
    got, expected = TableWriter(tables), TableWriter(reference)
    columns = ["network_id", "split", "metric"]
    pd.testing.assert_frame_equal(got.read("scores").sort_values(columns, ignore_index=True),
                                  expected.read("scores").sort_values(columns, ignore_index=True),
                                  rtol=1e-5, check_exact=False)
    pool.shutdown()


@pytest.mark.ray
def test_pool_scores_one_checkpoint_at_a_time_until_it_drains_then_one_per_cpu(tmp_path, ray_session):
    from sweep.command.callbacks import drain_line
    from sweep.scoring.actors import ScoringPool

    # The last checkpoint to land is the largest: the drain hands it out before the smaller one.
    bundles = [make_bundle(members=2, seed0=0), make_bundle(members=2, seed0=20), make_bundle(members=3, width=32, seed0=40)]
    sources = [str(write_checkpoint(tmp_path / f"c{i}", b, make_nets(b))) for i, b in enumerate(bundles)]
    assert local_size(sources[2]) > local_size(sources[1])
    reference = tmp_path / "reference"
    for source in sources:
        Scorer("cpu").score(source, str(reference), SETTINGS)
    tables = str(tmp_path / "tables")
    pool = ScoringPool(tables, SETTINGS, num_actors=1)  # the session has 2 CPUs
    for source in sources:
        pool.submit(source)
    assert (pool.stats()["running"], pool.stats()["queued"]) == (1, 2)  # trials may still be running
    stats = pool.drain(timeout=0)  # training is over: the actor takes a second checkpoint at once
    assert (stats["running"] + stats["done"], stats["queued"]) == (2, 1)
    assert [job.source for job in pool._queue] == [sources[1]]
    with pytest.raises(ValueError, match="every_s must be a positive"):
        pool.drain(progress=print, every_s=0)
    reports = []
    assert pool.drain(timeout=120, progress=reports.append, every_s=0.05)["done"] == 3
    # Progress as the drain starts, with the work still to do, then while it runs.
    assert reports[0]["running"] + reports[0]["queued"] >= 1 and reports[0]["submitted"] == 3
    done = [r["done"] for r in reports]
    assert len(reports) >= 2 and done == sorted(done) and done[0] < 3
    assert drain_line(reports[0], 3.4) == (
        f"[sweep] scoring: {done[0]} of 3 checkpoint(s) done (0 failed), {reports[0]['running']} running, "
        f"{reports[0]['queued']} waiting | 3s"
    )
    got, expected = TableWriter(tables), TableWriter(reference)
    columns = ["network_id", "split", "metric"]
    pd.testing.assert_frame_equal(got.read("scores").sort_values(columns, ignore_index=True),
                                  expected.read("scores").sort_values(columns, ignore_index=True))
    pool.shutdown()


@pytest.mark.ray
def test_a_local_sweep_starts_ray_workers_at_normal_priority():
    # At Ray's default nice 15 an idle-class scoring actor takes ~8% of each trial's core.
    code = ("import os, ray\nfrom sweep.command.cli import start_ray\nstart_ray(None)\n"
            "print('nice', ray.get(ray.remote(lambda: os.nice(0)).remote()))\nray.shutdown()")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert "nice 0" in done.stdout, done.stdout + done.stderr


def test_the_driver_of_a_scored_sweep_never_imports_torch():
    # The driver only hands checkpoints to the actors and reports what is scored; importing torch
    # there costs every `sweep run` and `sweep status` ~3 CPU-seconds.
    code = ("import sys\nfrom sweep.command import runner, status\nfrom sweep.command.callbacks import ScoringCallback\nfrom sweep.plan import sweep_plan\n"
            "from sweep.scoring.actors import ScoringPool\nfrom sweep.plan.planner import expand\nfrom sweep.plan.spec import load_spec\n"
            "spec = load_spec('digits')\n"
            "plan = sweep_plan.make_plan(spec, expand(spec), name='x', storage='unused', spec_source='digits',\n"
            "                         spec_text='', spec_suffix='.yaml')\n"
            "config = runner._run_config(plan, score=True, max_failures=1)\n"
            "assert any(isinstance(c, ScoringCallback) for c in config.callbacks)\n"
            "print(runner.scoring_pool_kwargs(plan)['settings'].transitions_k, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["256", "False"], done.stdout + done.stderr


@pytest.mark.ray
def test_pool_records_a_checkpoint_whose_actor_keeps_dying(tmp_path, ray_session):
    from sweep.scoring.actors import ScoringPool

    bundle = make_bundle(members=2)
    source = str(write_checkpoint(tmp_path / "c", bundle, make_nets(bundle)))
    tables = str(tmp_path / "tables")
    pool = ScoringPool(tables, SETTINGS, num_actors=1, max_retries=0)
    pool.submit(source)
    ray_session.kill(pool.actors()[0])
    stats = pool.drain(timeout=120)
    assert (stats["done"], stats["failed"], stats["replaced"]) == (0, 1, 1)
    assert "scoring actor died 1 time(s)" in stats["failures"][0]
    scores = TableWriter(tables).read("scores")
    assert set(scores.network_id) == set(bundle.network_ids) and (scores.status == "failed").all()
    pool.shutdown()


def test_jiangs_measures_per_network_as_computed_alone(data):
    # Distance from init: the checkpoint's configs rebuild the initial weights exactly, so it is
    # 0 at init and ‖3·W_last‖ for nets whose last layer was multiplied by 4.
    bundle = make_bundle(members=3)
    nets = make_nets(bundle)
    settings = SETTINGS.replace(sharpness_samples=3, sharpness_search_depth=6)
    init = scored(mc.stack(make_nets(bundle, sharpen=1.0)), meta_of(bundle, tag="init"), data, settings)["scores"]
    assert (init.query("metric == 'distance_from_init'")["mean"] == 0).all()
    # The train-point measures are for trained networks: none at init.
    assert not set(init["metric"]) & {"spectral_margin", "frobenius_margin", "pacbayes_sharpness", "pacbayes_mag_flatness"}
    scores = scored(mc.stack(nets), meta_of(bundle), data, settings)["scores"]
    for i, (net, network_id) in enumerate(zip(nets, bundle.network_ids)):
        rows = scores[scores.network_id == network_id].set_index("metric")
        assert rows.loc["distance_from_init", "split"] == "weights"
        assert rows.loc["distance_from_init", "mean"] == pytest.approx(3 / 4 * net[-1].weight.norm().item(), rel=1e-5)
        # The train-point measures: one value per network from the train points, equal to the
        # metric core on that network alone with its own generator.
        probe = scoring_inputs(data, settings).probes[1]
        for metric in ("pacbayes_sharpness", "pacbayes_mag_flatness"):
            alone = getattr(mc, metric)(net, probe.x, probe.y, generator=sweep.scoring.measure._generators([network_id], 0, "cpu"),
                                        samples=3, depth=6, target=0.1)
            assert rows.loc[metric, "mean"] == pytest.approx(float(alone), rel=1e-6)
            assert rows.loc[metric, "split"] == "train" and rows.loc[metric, "n_points"] == settings.train_points
            assert json.loads(rows.loc[metric, "params"]) == {"samples": 3, "depth": 6, "target": 0.1}
    # Untrained, these networks have no positive margin at the 10th percentile: NaN, as defined.
    assert scores.query("metric in @MARGIN_NORMALIZED")["mean"].isna().all()


def test_margin_normalized_measures_of_trained_networks_as_computed_alone(data):
    # Fitted to the scored training points, so the 10th-percentile margin is positive and the
    # measures finite; each equals the metric core on that network alone.
    bundle = make_bundle(members=2)
    nets = make_nets(bundle, sharpen=1.0)
    probe = scoring_inputs(data, SETTINGS).probes[1]
    for net in nets:
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(300):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(probe.x), probe.y).backward()
            optimizer.step()
    scores = scored(mc.stack(nets), meta_of(bundle), data, SETTINGS)["scores"]
    for net, network_id in zip(nets, bundle.network_ids):
        rows = scores[scores.network_id == network_id].set_index("metric")
        for metric in MARGIN_NORMALIZED:
            alone = float(getattr(mc, metric)(net, probe.x, probe.y))
            assert np.isfinite(alone) and alone > 0
            assert rows.loc[metric, "mean"] == pytest.approx(alone, rel=1e-5)
            assert rows.loc[metric, "split"] == "train" and rows.loc[metric, "n_points"] == SETTINGS.train_points


def test_train_point_measures_use_the_labels_each_network_was_trained_on(data):
    # Two members with the same weights but different label noise: their train-point measures
    # (loss, accuracy and margin too) differ, each from its own training labels, not the true
    # ones; their test-point measures are the same, from the true labels.
    clean = make_bundle(members=1).members[0]
    noisy = dataclasses.replace(clean, random_label_fraction=0.5)
    bundle = BundleConfig((clean, noisy))
    nets = [build_network(clean, DATASETS["digits"]) for _ in range(2)]
    settings = SETTINGS.replace(sharpness_samples=2, sharpness_search_depth=4)
    scores = scored(mc.stack(nets), meta_of(bundle), data, settings)["scores"].set_index(["network_id", "split", "metric"])
    probe = scoring_inputs(data, settings).probes[1]
    index = torch.as_tensor(probe.index)
    for config, net in zip(bundle.members, nets):
        y = member_labels(config, data)[index]
        alone = mc.pacbayes_mag_flatness(net, probe.x, y, generator=sweep.scoring.measure._generators([config.network_id], 0, "cpu"),
                                         samples=2, depth=4)
        assert scores.loc[(config.network_id, "train", "pacbayes_mag_flatness"), "mean"] == pytest.approx(float(alone), rel=1e-6)
        logits = copy.deepcopy(net).double()(probe.x.double())
        true = logits.gather(1, y[:, None]).squeeze(1)
        expected = {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).double().mean().item(),
                    "margin": (true - logits.scatter(1, y[:, None], -math.inf).amax(1)).mean().item()}
        for metric, value in expected.items():
            assert scores.loc[(config.network_id, "train", metric), "mean"] == pytest.approx(value, rel=1e-5)
    assert not torch.equal(member_labels(noisy, data)[index], probe.y)
    for metric in ("loss", "margin"):  # (an untrained net's accuracy may match by chance)
        assert scores.loc[(clean.network_id, "train", metric), "mean"] != scores.loc[(noisy.network_id, "train", metric), "mean"]
    for metric in ("loss", "accuracy", "margin"):
        assert scores.loc[(clean.network_id, "test", metric), "mean"] == scores.loc[(noisy.network_id, "test", metric), "mean"]


def test_a_memorised_points_loss_is_its_float64_value_not_zero():
    # Logits [30, 0]: float32 cross-entropy rounds 9.4e-14 to 0; the scores keep it.
    logits = torch.tensor([[[30.0, 0.0], [0.0, 40.0], [1.0, 2.0]]])
    y = torch.tensor([[0, 1, 0]])
    assert F.cross_entropy(logits.transpose(1, 2), y, reduction="none")[0, 0] == 0
    expected = F.cross_entropy(logits[0].double(), y[0], reduction="none")
    losses = sweep.scoring.measure.point_losses(logits, y)
    assert losses.dtype == torch.float32 and losses[0, 0] > 0
    torch.testing.assert_close(losses[0].double(), expected, rtol=1e-6, atol=0)


def test_convolutional_checkpoints_are_stacked_only_with_their_own_pooling(data, monkeypatch, caplog):
    # Max and average pooling hold the same parameter shapes: scored together, each must still be
    # one stacked population of its own (not a failed stack, retried member by member).
    def bundle(pooling, seed0):
        return BundleConfig(tuple(dataclasses.replace(m, architecture="cnn", family="vgg", width=4, depth=1, stages=2,
                                                      kernel_size=3, pooling=pooling, head="flatten")
                                  for m in make_bundle(members=2, seed0=seed0).members))
    bundles = [bundle("max", 0), bundle("avg", 10), bundle("max", 20)]
    checkpoints = [(initial_population(b.members, data), meta_of(b)) for b in bundles]
    assert checkpoints[0][0].parameters()[0].shape == checkpoints[1][0].parameters()[0].shape
    calls = []
    real = sweep.scoring.measure._measure
    monkeypatch.setattr(sweep.scoring.measure, "_measure", lambda members, *a: calls.append(members.net.num_models) or real(members, *a))
    together = score_checkpoints(checkpoints, data, SETTINGS)
    assert sorted(calls) == [2, 4] and "one at a time" not in caplog.text
    for (population, meta), tables in zip(checkpoints, together):
        alone = score_checkpoint(population, meta, data, SETTINGS)
        for name in tables:
            pd.testing.assert_frame_equal(tables[name].to_pandas(), alone[name].to_pandas(), rtol=1e-5, check_exact=False)


def test_the_planner_counts_the_weights_a_scoring_call_holds(data):
    # Two checkpoints of 8 wide networks scored in one call with every metric, each tensor made
    # tracked op by op: what is alive at once, with the checkpoints' own copies (loaded on the
    # host, then moved to the device), is within the planner's count, and the count not loose.
    settings = SETTINGS.replace(sharpness_samples=2, sharpness_search_depth=3)
    bundles = [make_bundle(members=8, width=512, depth=3, seed0=100 * k) for k in range(2)]
    checkpoints = [(mc.stack(make_nets(b)), meta_of(b)) for b in bundles]
    inputs = scoring_inputs(data, settings)
    with LiveBytes() as live:
        score_checkpoints(checkpoints, data, settings, inputs)
    loaded = sum(4 * t.numel() for population, _ in checkpoints for t in population.parameters())
    assert live.peak + loaded <= planner.scoring_weight_bytes(bundles, checkpoints=2) <= 1.4 * (live.peak + loaded)


def test_train_only_measures_leave_an_untrained_checkpoint_scored_without_rows(tmp_path):
    # Jiang et al.'s measures are for trained networks: a setting of only those has no rows for
    # `init`, and that checkpoint is still scored (not redone by every `sweep score`).
    bundle = make_bundle(members=2)
    nets = make_nets(bundle)
    init = write_checkpoint(tmp_path / "init", bundle, nets, tag="init")
    end = write_checkpoint(tmp_path / "end", bundle, nets, tag="end")
    settings = dataclasses.replace(SETTINGS, metrics=("spectral_margin",))
    tables = str(tmp_path / "tables")
    summaries = Scorer("cpu").score_many([str(init), str(end)], tables, settings)
    assert [s["message"] for s in summaries] == ["", ""]
    scores = TableWriter(tables).read("scores")
    assert set(scores["checkpoint"]) == {"end"} and set(scores["metric"]) == {"spectral_margin"}
    assert (scores["status"] == "ok").all() and len(scores) == 2
    assert unscored(tables, [str(init), str(end)]) == []
    # its empty file says what it was scored with: new settings with test metrics take it again
    writer, key = TableWriter(tables), f"{bundle.bundle_id}--init"
    assert writer.stale_keys(dataclasses.asdict(settings)) == []
    assert writer.stale_keys(dataclasses.asdict(SETTINGS)) == sorted([key, f"{bundle.bundle_id}--end"])
    # one that fails has no failed rows to hold its failure: it stays unscored, to be tried again
    (init / "population.pt").write_bytes(b"not a checkpoint")
    again = str(tmp_path / "again")
    [summary] = Scorer("cpu").score_many([str(init)], again, settings)
    assert summary["message"].startswith("scoring failed") or "population.pt" in summary["message"]
    assert unscored(again, [str(init)]) == [str(init)]
