"""Scoring checkpoints: the metric core on a bundle's stacked population, as table rows.

Pure computation and file I/O only (no Ray): `ScoringActor` in `sweep.scoring_actors` wraps
`Scorer`, and the benchmark and tests use it directly.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import Tensor

import metrics_core as mc
from sweep import storage
from sweep.checkpoints import POPULATION_FILE, CheckpointError, label, locate, read_meta
from sweep.data import load_dataset
from sweep.models import init_parameters
from sweep.population import member_labels
from sweep.score_settings import (INIT_METRICS, POINT_METRICS, PROFILE_TAGS, TRAIN_METRICS, WEIGHT_METRICS,
                                  ScoreSettings)
from sweep.spec import BundleConfig
from sweep.tables import SCHEMAS, TableWriter, build, checkpoint_key

log = logging.getLogger(__name__)

TRAJECTORY_KINDS = ("random", "different_class", "same_class")


@dataclass(frozen=True)
class Probe:
    """The fixed points of one split that every network of a data set is scored on."""

    split: str
    index: np.ndarray  # [n] indices into the split
    x: Tensor  # [n, d]
    y: Tensor  # [n]
    partners: Tensor  # [n, 2, d]: the other two anchors of each point's transition ellipse


@dataclass(frozen=True)
class ScoringInputs:
    """Everything a checkpoint is scored on, prepared once per data set, settings and device."""

    probes: tuple[Probe, ...]
    ellipses: Mapping[str, Tensor]  # kind -> [E, k, d]
    slice_anchors: Tensor  # [S, 3, d]


def fixed_points(num_points: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` points of a split of `num_points` (all of them when n >= num_points);
    a function of the seed alone, so every network of a data set sees the same points."""
    if n >= num_points:
        return np.arange(num_points)
    generator = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(num_points, generator=generator)[:n].numpy())


def prepare(data, settings: ScoreSettings) -> ScoringInputs:
    """The fixed points, transition partners, ellipses and slice anchors for `data` (a
    `sweep.data.Dataset`), on the data's device; deterministic in `settings.seed`."""
    generator = torch.Generator().manual_seed(settings.seed)
    splits = [("test", data.x_test, data.y_test, settings.points)]
    if settings.train_points:
        splits.append(("train", data.x_train, data.y_train, settings.train_points))
    probes = []
    for offset, (split, x, y, n) in enumerate(splits):
        index = fixed_points(len(x), n, settings.seed + offset)
        partners = _partner_indices(torch.as_tensor(index), len(x), generator).to(x.device)
        probes.append(Probe(split, index, x[index], y[index], x[partners]))
    ellipses: dict[str, Tensor] = {}
    if settings.trajectories:
        ellipses = _ellipses(data, settings.ellipses_per_kind, settings.profile_points, generator)
    picks = torch.stack([torch.randperm(len(data.x_train), generator=generator)[:3] for _ in range(settings.slice_count)])
    return ScoringInputs(tuple(probes), ellipses, data.x_train[picks.to(data.x_train.device)])


def _partner_indices(index: Tensor, num_points: int, generator: torch.Generator) -> Tensor:
    """[n, 2] indices of two points of the split, distinct from each other and from `index`.

    Offsets r1 != r2 in [0, n-2] from each point land on two other points: r2 is r1 shifted
    by 1 + s (mod n-1), s in [0, n-3], so it can never equal r1.
    """
    if num_points < 3:
        raise ValueError(f"transition ellipses need at least 3 points in a split, got {num_points}")
    r1 = torch.randint(0, num_points - 1, index.shape, generator=generator)
    s = torch.randint(0, num_points - 2, index.shape, generator=generator)
    r2 = (r1 + 1 + s) % (num_points - 1)
    return torch.stack([(index + 1 + r1) % num_points, (index + 1 + r2) % num_points], dim=1)


def _ellipses(data, n: int, k: int, generator: torch.Generator) -> dict[str, Tensor]:
    """[n, k, d] trajectories of the three kinds of the paper's manifold experiment."""
    x, y = data.x_train, data.y_train.cpu()
    classes = torch.unique(y)
    if len(classes) < 3:
        raise ValueError(f"different-class ellipses need 3 classes in the train split, got {len(classes)}")
    different, same = [], []
    members = {int(c): torch.nonzero(y == c).flatten() for c in classes}
    eligible = [c for c, idx in members.items() if len(idx) >= 3]
    for _ in range(n):
        chosen = classes[torch.randperm(len(classes), generator=generator)[:3]]
        different.append(torch.stack([_pick(members[int(c)], 1, generator)[0] for c in chosen]))
        cls = eligible[int(torch.randint(len(eligible), (1,), generator=generator))]
        same.append(_pick(members[cls], 3, generator))
    anchors = {
        "different_class": x[torch.stack(different).to(x.device)],
        "same_class": x[torch.stack(same).to(x.device)],
    }
    mean, std = x.mean(0), x.std(0)
    random = mc.random_ellipse(mean, std, k, generator=_device_generator(generator, x.device), n=n)
    return {
        "random": random,
        **{kind: mc.ellipse(a[:, 0], a[:, 1], a[:, 2], k) for kind, a in anchors.items()},
    }


def _pick(indices: Tensor, n: int, generator: torch.Generator) -> Tensor:
    return indices[torch.randperm(len(indices), generator=generator)[:n]]


def _device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


# --- the computation -------------------------------------------------------------------------


def score_checkpoint(
    population: mc.MLP,
    meta: Mapping,
    data,
    settings: ScoreSettings,
    inputs: ScoringInputs | None = None,
) -> dict[str, pa.Table]:
    """Rows of `scores`, `points`, `trajectories` and `slices` for every member of a checkpoint,
    as Arrow tables of the documented schemas (`.to_pandas()` gives frames); see
    `score_checkpoints`."""
    return score_checkpoints([(population, meta)], data, settings, inputs)[0]


def score_checkpoints(
    checkpoints: Sequence[tuple[mc.MLP, Mapping]],
    data,
    settings: ScoreSettings,
    inputs: ScoringInputs | None = None,
) -> list[dict[str, pa.Table]]:
    """The rows of several checkpoints of one data set (`score_checkpoint` of each, in order),
    computed together: the members of every checkpoint with the same layers, activation and
    measures (trajectory profiles and slices are measured at `init` and `end` only) are one
    stacked population, so the points, trajectories and slice planes are set up once and the
    device sees one large computation instead of one per checkpoint.

    Members with identical weights (at initialisation, every member with the same seed: learning
    rates and labels do not change initial weights) are computed once, as every measure depends
    on the weights and the fixed points alone. Members whose weights are not finite (diverged)
    get NaN metrics without being computed; if a batched computation raises, each of its members
    is retried alone, so one failing network is recorded as failed and the others still get
    their scores.
    """
    inputs = inputs or prepare(data, settings)
    device, dtype = inputs.probes[0].x.device, inputs.probes[0].x.dtype
    train = next((probe for probe in inputs.probes if probe.split == "train"), None)
    wants_labels = train is not None and bool(set(TRAIN_METRICS) & set(settings.metrics))
    populations, inits, labels, copies, finite, groups = [], [], [], [], [], {}
    for c, (population, meta) in enumerate(checkpoints):
        ids = list(meta["network_ids"])
        if len(ids) != population.num_models:
            raise CheckpointError(
                f"checkpoint {meta.get('bundle_id')}/{meta.get('tag')} lists {len(ids)} network_ids "
                f"for {population.num_models} stacked networks"
            )
        population = population.to(device=device, dtype=dtype)
        populations.append(population)
        inits.append(_initial_population(meta, population) if set(INIT_METRICS) & set(settings.metrics) else None)
        labels.append(_training_labels(meta, data, train) if wants_labels else None)
        finite.append(_finite_members(population))
        copies.append(_identical_members(population, [i for i in range(len(ids)) if finite[c][i]], labels[c]))
        key = (tuple(w.shape[1:] for w in population.weights), population.activation, meta["tag"] in PROFILE_TAGS,
               _trained(meta))
        groups.setdefault(key, []).extend((c, i) for i in copies[c])
    measured: list[dict[int, dict[str, Tensor]]] = [{} for _ in checkpoints]
    errors: list[dict[int, str]] = [{} for _ in checkpoints]
    batch = _Batch(populations, inits, labels, [list(meta["network_ids"]) for _, meta in checkpoints],
                   [f"{meta.get('bundle_id')}/{meta.get('tag')}" for _, meta in checkpoints])
    for (_, _, profiles, trained), members in groups.items():
        _measure_members(batch, members, inputs, settings, profiles, trained, measured, errors)
    out = []
    for c, (population, meta) in enumerate(checkpoints):
        ids = list(meta["network_ids"])
        for first, others in copies[c].items():
            for i in others:
                if first in measured[c]:
                    measured[c][i] = measured[c][first]
                if first in errors[c]:
                    errors[c][i] = errors[c][first]
        statuses = list(meta.get("statuses") or ["unknown"] * len(ids))
        notes = {
            i: f"weights are not finite (network {statuses[i]}): metrics are NaN"
            for i in range(len(ids))
            if not finite[c][i]
        }
        profiles = meta["tag"] in PROFILE_TAGS
        out.append(_checkpoint_rows(meta, ids, inputs, settings, profiles, measured[c], errors[c], notes))
    return out


@dataclass(frozen=True)
class _Members:
    """Networks measured in one call: their population, their initial weights and the labels
    they were trained on at the train points (None where not known), and their ids."""

    net: mc.MLP
    init: mc.MLP | None
    train_labels: Tensor | None  # [M, n train points]
    ids: list[str]


@dataclass(frozen=True)
class _Batch:
    """The checkpoints scored together: populations, their initial weights and training labels
    (or None), ids, and labels for messages."""

    populations: list[mc.MLP]
    inits: list[mc.MLP | None]
    train_labels: list[Tensor | None]
    ids: list[list[str]]
    labels: list[str]

    def select(self, members: Sequence[tuple[int, int]]) -> _Members:
        """The (checkpoint, member) pairs as one population, checkpoint by checkpoint."""
        by_checkpoint: dict[int, list[int]] = {}
        for c, i in members:
            by_checkpoint.setdefault(c, []).append(i)
        net = mc.stack([_select(self.populations[c], picked) for c, picked in by_checkpoint.items()])
        init = train_labels = None
        if all(self.inits[c] is not None for c in by_checkpoint):
            init = mc.stack([_select(self.inits[c], picked) for c, picked in by_checkpoint.items()])
        if all(self.train_labels[c] is not None for c in by_checkpoint):
            train_labels = torch.cat([self.train_labels[c][picked] for c, picked in by_checkpoint.items()])
        return _Members(net, init, train_labels, [self.ids[c][i] for c, picked in by_checkpoint.items() for i in picked])


def _measure_members(batch: _Batch, members, inputs, settings, profiles, trained, measured, errors) -> None:
    """Measure `members` ((checkpoint, member) pairs of same-shape populations) as one stacked
    population into `measured`, or, if that raises, one at a time (failures into `errors`)."""
    order = sorted(members)  # as `select` stacks them: checkpoint by checkpoint
    try:
        results = _split(_measure(batch.select(order), inputs, settings, profiles, trained), range(len(order)))
        for row, (c, i) in enumerate(order):
            measured[c][i] = results[row]
    except Exception as batched:  # noqa: BLE001 - any failure is narrowed down member by member below
        # Said out loud: when every member then succeeds alone, the batched route has a bug that
        # would otherwise only show as slow scoring.
        log.warning("checkpoint(s) %s: scoring the %d members together raised %s: %s; scoring them one at a time",
                    ", ".join(sorted({batch.labels[c] for c, _ in members})), len(members), type(batched).__name__,
                    batched)
        for c, i in members:
            try:
                measured[c].update(_split(_measure(batch.select([(c, i)]), inputs, settings, profiles, trained), [i]))
            except Exception as error:  # noqa: BLE001 - recorded as this member's failure
                errors[c][i] = f"scoring raised {type(error).__name__}: {error}"


def _initial_population(meta: Mapping, population: mc.MLP) -> mc.MLP | None:
    """The checkpoint's networks at initialisation, rebuilt from their configs and seeds (exactly
    what the trainer started from); None when meta.json names no bundle."""
    if "bundle" not in meta:
        return None
    members = BundleConfig.from_dict(meta["bundle"]).members
    layers = [init_parameters(m, population.input_dim, population.num_classes) for m in members]
    weights = tuple(torch.stack([net[l][0] for net in layers]) for l in range(len(layers[0])))
    biases = tuple(torch.stack([net[l][1] for net in layers]) for l in range(len(layers[0])))
    return mc.MLP(weights, biases, population.activation).to(device=population.device, dtype=population.dtype)


def _training_labels(meta: Mapping, data, train: Probe) -> Tensor | None:
    """[M, n] the labels each network was trained on (its random-label fraction applied) at the
    train points; None when meta.json names no bundle (then the true labels are used)."""
    if "bundle" not in meta:
        return None
    index = torch.as_tensor(train.index, device=train.y.device)
    return torch.stack([member_labels(m, data)[index] for m in BundleConfig.from_dict(meta["bundle"]).members])


def _generators(ids: Sequence[str], seed: int, device: torch.device) -> list[torch.Generator]:
    """One generator per network, from its id and the settings' seed: a network's noise draws do
    not depend on which other networks are scored with it."""
    return [torch.Generator(device=device).manual_seed(seed << 32 | zlib.crc32(i.encode())) for i in ids]


def failure_rows(meta: Mapping, settings: ScoreSettings, message: str) -> dict[str, pa.Table]:
    """Rows that record a checkpoint that could not be scored at all: a failed `scores` row per
    member, split and metric; no rows in the other tables."""
    ids = list(meta["network_ids"])
    everyone = set(range(len(ids)))
    tables = {name: SCHEMAS[name].empty_table() for name in ("points", "trajectories", "slices")}
    nan = _nan_stats(len(ids))
    keyed = [(split, metric, nan) for split, metric in _score_keys(settings, _trained(meta))]
    tables["scores"] = _score_rows(meta, ids, keyed, settings, dict.fromkeys(everyone, message), everyone)
    return tables


def _finite_members(population: mc.MLP) -> list[bool]:
    ok = torch.ones(population.num_models, dtype=torch.bool, device=population.device)
    for t in (*population.weights, *population.biases):
        ok &= torch.isfinite(t).flatten(1).all(dim=1)
    return ok.tolist()


def _identical_members(population: mc.MLP, members: Sequence[int], labels: Tensor | None = None
                       ) -> dict[int, list[int]]:
    """Each distinct set of weights (and training labels, where the measures use them) among
    `members`: its first member -> the later ones."""
    copies: dict[int, list[int]] = {}
    for i in members:
        first = next((j for j in copies if _same_weights(population, i, j)
                      and (labels is None or torch.equal(labels[i], labels[j]))), None)
        if first is None:
            copies[i] = []
        else:
            copies[first].append(i)
    return copies


def _same_weights(population: mc.MLP, i: int, j: int) -> bool:
    return all(torch.equal(t[i], t[j]) for t in (*population.weights, *population.biases))


def _select(population: mc.MLP, members: Sequence[int]) -> mc.MLP:
    if len(members) == population.num_models:
        return population
    index = torch.as_tensor(members, device=population.device)
    return mc.MLP(
        tuple(w.index_select(0, index) for w in population.weights),
        tuple(b.index_select(0, index) for b in population.biases),
        population.activation,
    )


def _split(measures: dict[str, Tensor], members: Sequence[int]) -> dict[int, dict[str, Tensor]]:
    host = {name: value.cpu() for name, value in measures.items()}
    return {member: {name: value[row] for name, value in host.items()} for row, member in enumerate(members)}


@torch.no_grad()
def _measure(members: _Members, inputs: ScoringInputs, settings: ScoreSettings, profiles: bool,
             trained: bool) -> dict[str, Tensor]:
    """Every measure of every member, as tensors with a leading member axis."""
    net = members.net
    wanted = set(settings.metrics)
    chunk = settings.chunk_size
    out: dict[str, Tensor] = {}
    for probe in inputs.probes:
        logits = mc.forward(net, probe.x, chunk_size=chunk)  # [M, n, C]
        y = probe.y.expand(logits.shape[0], -1)
        out[f"{probe.split}/loss"] = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        out[f"{probe.split}/prediction"] = logits.argmax(dim=2)
        out[f"{probe.split}/accuracy"] = (out[f"{probe.split}/prediction"] == y).to(logits.dtype)
        if "margin" in wanted:
            out[f"{probe.split}/margin"] = mc.margin(net, probe.x, probe.y)
        if wanted & {"jacobian_softmax", "jacobian_logits"} or probe.split == "test":
            softmax, logit = mc.jacobian_norms(net, probe.x, output="both", chunk_size=chunk)
            out[f"{probe.split}/jacobian_softmax"] = softmax
            out[f"{probe.split}/jacobian_logits"] = logit
        if "transitions" in wanted:
            out[f"{probe.split}/transitions"] = _transitions(net, probe, settings)
    for metric in WEIGHT_METRICS:
        if metric in wanted:
            out[f"weights/{metric}"] = getattr(mc, metric)(net)
    if "distance_from_init" in wanted and members.init is not None:
        out["weights/distance_from_init"] = mc.distance_from_init(net, members.init)
    if trained:
        out.update(_train_measures(members, inputs, settings, wanted))
    if profiles and settings.trajectories:
        for kind, z in inputs.ellipses.items():
            per_ellipse = None if chunk is None else max(1, chunk // z.shape[1])
            jac, density = mc.trajectory_profile(net, z, chunk_size=per_ellipse)  # [M, E, k]
            out[f"trajectory/{kind}/jacobian_softmax"] = jac
            out[f"trajectory/{kind}/transition_density"] = density
    if profiles and settings.slices and net.activation.piecewise_linear:
        for s, (a, b, c) in enumerate(inputs.slice_anchors):
            maps = mc.slice_codes(
                net, a, b, c, grid=settings.slice_grid, layers=settings.slice_layers, chunk_size=chunk
            )
            out[f"slice/{s}/region"] = maps.region.flatten(1)
            out[f"slice/{s}/boundary"] = maps.boundary.flatten(1)
            # The plane and its coordinates are the same for every member.
            out[f"slice/{s}/anchors"] = maps.anchors.expand(net.num_models, -1)
            out[f"slice/{s}/extent"] = maps.extent.expand(net.num_models, -1)
    return out


def _train_measures(members: _Members, inputs: ScoringInputs, settings: ScoreSettings,
                    wanted: set[str]) -> dict[str, Tensor]:
    """Jiang et al.'s measures from the training points, with the labels each network was trained
    on (none without train points)."""
    train = next((probe for probe in inputs.probes if probe.split == "train"), None)
    if train is None:
        return {}
    net, ids = members.net, members.ids
    y = train.y if members.train_labels is None else members.train_labels
    out = {}
    for metric in ("spectral_margin", "frobenius_margin"):
        if metric in wanted:
            out[f"train/{metric}"] = getattr(mc, metric)(net, train.x, y, chunk_size=settings.chunk_size)
    search = {"samples": settings.sharpness_samples, "depth": settings.sharpness_search_depth,
              "target": settings.sharpness_target, "chunk_size": settings.chunk_size}
    for metric in ("pacbayes_sharpness", "pacbayes_mag_flatness"):
        if metric in wanted:
            generators = _generators(ids, settings.seed, train.x.device)
            out[f"train/{metric}"] = getattr(mc, metric)(net, train.x, y, generator=generators, **search)
    return out


def _transitions(net: mc.MLP, probe: Probe, settings: ScoreSettings) -> Tensor:
    common = {"k": settings.transitions_k, "chunk_size": settings.chunk_size}
    if settings.trajectory == "ellipse":
        return mc.transition_counts(net, probe.x, partners=probe.partners, **common)
    # A fresh generator with a fixed seed: every network gets the same random planes.
    generator = torch.Generator().manual_seed(settings.seed)
    return mc.transition_counts(
        net, probe.x, trajectory="circle", radius=settings.circle_radius, generator=generator, **common
    )


# --- rows ------------------------------------------------------------------------------------


def _trained(meta: Mapping) -> bool:
    """Whether a checkpoint holds trained networks: Jiang et al.'s train-point measures are for
    those (at `init` the accuracy is near chance, so the noise search and the margins say nothing)."""
    return meta["tag"] != "init"


def _score_keys(settings: ScoreSettings, trained: bool = True) -> list[tuple[str, str]]:
    """(split, metric) of every `scores` row of a network; the train-point measures need train
    points (scoring.train_points > 0) and a trained checkpoint."""
    splits = ["test"] + (["train"] if settings.train_points else [])
    keys = [(split, m) for split in splits for m in POINT_METRICS if m in settings.metrics]
    keys += [("weights", m) for m in WEIGHT_METRICS + INIT_METRICS if m in settings.metrics]
    if settings.train_points and trained:
        keys += [("train", m) for m in TRAIN_METRICS if m in settings.metrics]
    return keys


def _params(metric: str, settings: ScoreSettings) -> str:
    if metric == "transitions":
        params = {"k": settings.transitions_k, "trajectory": settings.trajectory}
        if settings.trajectory == "circle":
            params["radius"] = settings.circle_radius
        return json.dumps(params)
    if metric in ("pacbayes_sharpness", "pacbayes_mag_flatness"):
        return json.dumps({"samples": settings.sharpness_samples, "depth": settings.sharpness_search_depth,
                           "target": settings.sharpness_target})
    if metric in ("spectral_margin", "frobenius_margin"):
        return json.dumps({"margin_quantile": mc.measures.MARGIN_QUANTILE})
    return "{}"


def _nan_stats(m: int) -> dict[str, np.ndarray]:
    nan = np.full(m, np.nan)
    return {"mean": nan, "median": nan, "std": nan, "n_points": np.zeros(m, dtype=np.int64)}


def _stats(values: Tensor) -> dict[str, np.ndarray]:
    """Mean, median and sample std over points of [M, n] values; NaN propagates (a diverged
    member keeps NaN rather than a statistic of its finite points)."""
    v = values.double()
    n = v.shape[1]
    std = v.std(dim=1) if n > 1 else torch.full_like(v[:, 0], math.nan)
    return {
        "mean": v.mean(dim=1).numpy(),
        "median": torch.quantile(v, 0.5, dim=1).numpy(),
        "std": std.numpy(),
        "n_points": np.full(len(v), n, dtype=np.int64),
    }


def _value_stats(values: Tensor, points: int = 0) -> dict[str, np.ndarray]:
    """One value per network (of the weights alone, or of `points` points as a whole): mean =
    median = the value; std is NaN."""
    value = values.numpy()
    return {"mean": value, "median": value, "std": np.full(len(value), np.nan),
            "n_points": np.full(len(value), points, dtype=np.int64)}


def _score_rows(meta, ids, keyed, settings, messages: Mapping[int, str], failed: set[int]) -> pa.Table:
    """One row per (split, metric, stats) of `keyed` × member, in that order; built as one
    table, since a table per metric costs more than its statistics."""
    m, r = len(ids), len(keyed)
    splits, metrics, stats = zip(*keyed)
    columns = {
        "network_id": list(ids) * r,
        "checkpoint": meta["tag"],
        "step": int(meta["step"]),
        "split": np.repeat(splits, m),
        "metric": np.repeat(metrics, m),
        **{name: np.concatenate([s[name] for s in stats]) for name in ("mean", "median", "std", "n_points")},
        "params": np.repeat([_params(metric, settings) for metric in metrics], m),
        "status": ["failed" if i in failed else "ok" for i in range(m)] * r,
        "message": [messages.get(i, "") for i in range(m)] * r,
    }
    return build("scores", columns, m * r)


def _per_member(ids: Sequence[str], rows: int) -> pa.Array:
    """Each network id repeated for its `rows` consecutive rows, as one string column."""
    index = pa.array(np.repeat(np.arange(len(ids), dtype=np.int32), rows))
    return pa.DictionaryArray.from_arrays(index, pa.array(ids, pa.string())).cast(pa.string())


def _integers(values: Tensor) -> pa.Array:
    """int64 values from a float tensor whose NaN mark missing values (members not measured)."""
    v = values.numpy()
    missing = np.isnan(v)
    return pa.array(np.where(missing, 0, v).astype(np.int64), mask=missing)


def _gather(measured: Mapping[int, Mapping[str, Tensor]], m: int, name: str, shape: tuple) -> Tensor:
    """[m, *shape] float64 of one measure across members, NaN for members without it."""
    out = torch.full((m, *shape), math.nan, dtype=torch.float64)
    for member, values in measured.items():
        if name in values:
            out[member] = values[name].double()
    return out


def _checkpoint_rows(meta, ids, inputs, settings, profiles, measured, errors, notes) -> dict[str, pa.Table]:
    m = len(ids)
    messages = {**notes, **errors}
    failed = set(errors)
    sizes = {probe.split: len(probe.index) for probe in inputs.probes}

    keyed = []
    for split, metric in _score_keys(settings, _trained(meta)):
        if split == "weights" or metric in TRAIN_METRICS:  # a value per network, not per point
            values = _gather(measured, m, f"{split}/{metric}", ())
            keyed.append((split, metric, _value_stats(values, sizes.get(split, 0))))
        else:
            keyed.append((split, metric, _stats(_gather(measured, m, f"{split}/{metric}", (sizes[split],)))))
    tables = {"scores": _score_rows(meta, ids, keyed, settings, messages, failed)}

    test = inputs.probes[0]
    n = len(test.index)
    prediction = _gather(measured, m, "test/prediction", (n,))
    columns = {
        "network_id": _per_member(ids, n),
        "checkpoint": meta["tag"],
        "split": "test",
        "point_index": np.tile(test.index, m),
        "label": np.tile(test.y.cpu().numpy(), m),
        "prediction": _integers(prediction.flatten()),
        **{
            column: _gather(measured, m, f"test/{column}", (n,)).flatten().numpy()
            for column in ("loss", "jacobian_softmax", "jacobian_logits", "transitions")
        },
    }
    tables["points"] = build("points", columns, m * n)

    tables["trajectories"] = SCHEMAS["trajectories"].empty_table()
    if profiles and settings.trajectories:
        parts = []
        for kind, z in inputs.ellipses.items():
            e, k = z.shape[0], z.shape[1]
            columns = {
                "network_id": _per_member(ids, e * k),
                "checkpoint": meta["tag"],
                "kind": kind,
                "ellipse": np.tile(np.repeat(np.arange(e), k), m),
                "position": np.tile(np.arange(k), m * e),
                "anchor": np.tile(np.isin(np.arange(k), mc.anchor_positions(k)), m * e),
                **{
                    column: _gather(measured, m, f"trajectory/{kind}/{column}", (e, k)).flatten().numpy()
                    for column in ("jacobian_softmax", "transition_density")
                },
            }
            parts.append(build("trajectories", columns, m * e * k))
        tables["trajectories"] = pa.concat_tables(parts)

    tables["slices"] = SCHEMAS["slices"].empty_table()
    if profiles and settings.slices:
        count = len(inputs.slice_anchors)
        maps = {
            part: [measured.get(member, {}).get(f"slice/{s}/{part}") for s in range(count) for member in range(m)]
            for part in ("region", "boundary", "anchors", "extent")
        }
        columns = {
            "network_id": list(ids) * count,
            "checkpoint": meta["tag"],
            "slice": np.repeat(np.arange(count), m),
            "layers": settings.slice_layers,
            "grid": settings.slice_grid,
            **{part: [None if t is None else t.numpy() for t in values] for part, values in maps.items()},
        }
        tables["slices"] = build("slices", columns, m * count)
    return tables


# --- checkpoints and the scorer ---------------------------------------------------------------


def load_checkpoint(source) -> tuple[mc.MLP, dict]:
    """The stacked population and the metadata of a checkpoint; CheckpointError names the file
    when either cannot be read."""
    meta = read_meta(source)
    return _load_population(source), meta


def _load_population(source) -> mc.MLP:
    fs, path = locate(source)
    where = f"{path}/{POPULATION_FILE}"
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(fs, where)), map_location="cpu", weights_only=True)
        activation = mc.Activation(state["activation"], state.get("activation_params") or {})
        return mc.MLP(tuple(state["weights"]), tuple(state["biases"]), activation)
    except Exception as error:  # noqa: BLE001 - whatever the cause, the file cannot be used
        raise CheckpointError(
            f"cannot load {where}: {type(error).__name__}: {error}; the file is missing or corrupt: "
            "re-run its trial, or leave the checkpoint out of scoring"
        ) from None


def write_rows(writer: TableWriter, key: str, tables: Mapping[str, pa.Table]) -> None:
    """Write a checkpoint's rows; `scores` last, so a checkpoint counts as scored only when
    everything else is on the storage."""
    for name in sorted(tables, key=lambda table: table == "scores"):
        writer.write(name, key, tables[name])


def record_failure(table_root: str, source, settings: ScoreSettings, message: str) -> str:
    """Record a checkpoint that could not be scored as failed `scores` rows (when its metadata
    can be read, else there are no network ids to record); returns a description."""
    try:
        meta = read_meta(source)
    except CheckpointError as error:
        return f"{label(source)}: {message} ({error})"
    key = checkpoint_key(meta["bundle_id"], meta["tag"])
    write_rows(TableWriter(table_root), key, failure_rows(meta, settings, message))
    return f"{key}: {message}"


class Scorer:
    """Scores checkpoints and writes their rows; keeps data sets and fixed points on its device
    between checkpoints, so a checkpoint costs only loading its weights and computing."""

    def __init__(self, device: str | torch.device | None = None, threads: int | None = None):
        self.threads = threads
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._inputs: dict[tuple, tuple[object, ScoringInputs]] = {}
        self._preparing = threading.Lock()  # checkpoints may be scored in several threads at once

    def inputs(self, spec, settings: ScoreSettings):
        """A data set (its `DataSpec`) on this scorer's device and its scoring inputs, prepared
        once."""
        key = (spec, settings)
        with self._preparing:
            if key not in self._inputs:
                data = load_dataset(spec, device=self.device)
                self._inputs[key] = (data, prepare(data, settings))
        return self._inputs[key]

    def score(self, source, table_root: str, settings: ScoreSettings) -> dict:
        """Score one checkpoint and write its rows (`score_many` of one)."""
        return self.score_many([source], table_root, settings)[0]

    def score_many(self, sources: Sequence, table_root: str, settings: ScoreSettings) -> list[dict]:
        """Score checkpoints and write their rows, those of one data set in one batched call
        (`score_checkpoints`); never raises for a bad checkpoint or a failing network (those are
        recorded as failed rows). Returns a summary per checkpoint, in order, for progress."""
        if self.threads:  # torch's thread count is per thread, and an actor may call from several
            torch.set_num_threads(self.threads)
        started = time.perf_counter()
        summaries: list[dict] = []
        loaded: dict[object, list[tuple[int, mc.MLP, dict]]] = {}
        for source in sources:
            summary = {"source": label(source), "key": None, "members": 0, "failed_members": 0, "points": 0, "message": ""}
            summaries.append(summary)
            try:
                meta = read_meta(source)
            except CheckpointError as error:
                summary["message"] = str(error)
                continue
            summary.update(key=checkpoint_key(meta["bundle_id"], meta["tag"]), members=len(meta["network_ids"]))
            try:
                population = _load_population(source)
                data_spec = checkpoint_dataset(meta)
            except CheckpointError as error:
                summary["message"] = f"scoring failed: CheckpointError: {error}"
                self._write(table_root, summary, failure_rows(meta, settings, summary["message"]))
                continue
            loaded.setdefault(data_spec, []).append((len(summaries) - 1, population, meta))
        for data_spec, items in loaded.items():
            try:
                data, inputs = self.inputs(data_spec, settings)
                results = score_checkpoints([(p, m) for _, p, m in items], data, settings, inputs)
            except Exception as error:  # noqa: BLE001 - recorded as failed rows, never lost
                message = f"scoring failed: {type(error).__name__}: {error}"
                results = [failure_rows(meta, settings, message) for _, _, meta in items]
                for index, _, _ in items:
                    summaries[index]["message"] = message
            for (index, _, _), tables in zip(items, results):
                self._write(table_root, summaries[index], tables)
        seconds = time.perf_counter() - started
        return [{**summary, "seconds": seconds} for summary in summaries]

    @staticmethod
    def _write(table_root: str, summary: dict, tables: Mapping[str, pa.Table]) -> None:
        write_rows(TableWriter(table_root), summary["key"], tables)
        scores = tables["scores"]
        failed = pc.count_distinct(scores["network_id"].filter(pc.equal(scores["status"], "failed")))
        summary.update(failed_members=failed.as_py(), points=tables["points"].num_rows)


def checkpoint_dataset(meta: Mapping):
    """The data set a checkpoint's bundle was trained on (from its meta.json)."""
    if "bundle" not in meta:
        raise CheckpointError(
            f"checkpoint {meta['bundle_id']}/{meta['tag']}: meta.json has no 'bundle' (the BundleConfig "
            "naming its data set); it was not written by sweep.trainable"
        )
    return BundleConfig.from_dict(meta["bundle"]).dataset
