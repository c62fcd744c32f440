"""The measuring: the metric core on checkpoints' stacked populations, in one batched call for
checkpoints of one data set; members that diverged or repeat another are set aside, not lost."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

import metrics_core as mc

from sweep.plan.networks import BundleConfig
from sweep.scoring.inputs import Probe, ScoringInputs, scoring_inputs
from sweep.scoring.rows import checkpoint_rows, is_trained
from sweep.scoring.settings import (INIT_METRICS, MARGIN_METRICS, PROFILE_TAGS, SHARPNESS_METRICS, WEIGHT_METRICS,
                                    ScoringSettings)
from sweep.training.checkpoints import CheckpointError
from sweep.training.data import Dataset
from sweep.training.models import initial_population
from sweep.training.population import member_labels

log = logging.getLogger(__name__)


def score_checkpoint(
    population: mc.Population,
    meta: Mapping,
    data,
    settings: ScoringSettings,
    inputs: ScoringInputs | None = None,
) -> dict[str, pa.Table]:
    """Rows of `scores`, `points`, `trajectories` and `slices` for every member of a checkpoint,
    as Arrow tables of the documented schemas (`.to_pandas()` gives frames); see
    `score_checkpoints`."""
    return score_checkpoints([(population, meta)], data, settings, inputs)[0]


def score_checkpoints(
    checkpoints: Sequence[tuple[mc.Population, Mapping]],
    data,
    settings: ScoringSettings,
    inputs: ScoringInputs | None = None,
) -> list[dict[str, pa.Table]]:
    """The rows of several checkpoints of one data set (`score_checkpoint` of each, in order),
    computed together: the members of every checkpoint with the same layout (layers, pooling,
    activation) and measures (trajectory profiles and slices are measured at `init` and `end`
    only) are one stacked population, so the points, trajectories and slice planes are set up
    once and the device sees one large computation instead of one per checkpoint.

    Members with identical weights (at initialisation, every member with the same seed: learning
    rates and labels do not change initial weights) are computed once, as every measure depends
    on the weights and the fixed points alone. Members whose weights are not finite (diverged)
    get NaN metrics without being computed; if a batched computation raises, each of its members
    is retried alone, so one failing network is recorded as failed and the others still get
    their scores.
    """
    inputs = inputs or scoring_inputs(data, settings)
    device, dtype = inputs.probes[0].x.device, inputs.probes[0].x.dtype
    train = next((probe for probe in inputs.probes if probe.split == "train"), None)
    # Loss, accuracy and margin at the train points are always measured, against the labels each
    # network was trained on (a random-label network memorises its own labels, not the true ones).
    wants_labels = train is not None
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
        inits.append(_initial_population(meta, population, data) if set(INIT_METRICS) & set(settings.metrics) else None)
        labels.append(_training_labels(meta, data, train) if wants_labels else None)
        finite.append(_finite_members(population))
        copies.append(_identical_members(population, [i for i in range(len(ids)) if finite[c][i]], labels[c]))
        key = (type(population), population.layout, meta["tag"] in PROFILE_TAGS, is_trained(meta))
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
        out.append(checkpoint_rows(meta, ids, inputs, settings, profiles, measured[c], errors[c], notes))
    return out


@dataclass(frozen=True)
class _Members:
    """Networks measured in one call: their population, their initial weights and the labels
    they were trained on at the train points (None where not known), and their ids."""

    net: mc.Population
    init: mc.Population | None
    train_labels: Tensor | None  # [M, n train points]
    ids: list[str]


@dataclass(frozen=True)
class _Batch:
    """The checkpoints scored together: populations, their initial weights and training labels
    (or None), ids, and labels for messages."""

    populations: list[mc.Population]
    inits: list[mc.Population | None]
    train_labels: list[Tensor | None]
    ids: list[list[str]]
    labels: list[str]

    def select(self, members: Sequence[tuple[int, int]]) -> _Members:
        """The (checkpoint, member) pairs as one population, checkpoint by checkpoint."""
        by_checkpoint: dict[int, list[int]] = {}
        for c, i in members:
            by_checkpoint.setdefault(c, []).append(i)
        net = _stack([_select(self.populations[c], picked) for c, picked in by_checkpoint.items()])
        init = train_labels = None
        if all(self.inits[c] is not None for c in by_checkpoint):
            init = _stack([_select(self.inits[c], picked) for c, picked in by_checkpoint.items()])
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


def _initial_population(meta: Mapping, population: mc.Population, data: Dataset) -> mc.Population | None:
    """The checkpoint's networks at initialisation, rebuilt from their configs and seeds (exactly
    what the trainer started from); None when meta.json names no bundle."""
    if "bundle" not in meta:
        return None
    members = BundleConfig.from_dict(meta["bundle"]).members
    return initial_population(members, data).to(device=population.device, dtype=population.dtype)


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


def _finite_members(population: mc.Population) -> list[bool]:
    ok = torch.ones(population.num_models, dtype=torch.bool, device=population.device)
    for t in population.parameters():
        ok &= torch.isfinite(t).flatten(1).all(dim=1)
    return ok.tolist()


def _identical_members(population: mc.Population, members: Sequence[int], labels: Tensor | None = None
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


def _same_weights(population: mc.Population, i: int, j: int) -> bool:
    return all(torch.equal(t[i], t[j]) for t in population.parameters())


def _select(population: mc.Population, members: Sequence[int]) -> mc.Population:
    if len(members) == population.num_models:
        return population
    index = torch.as_tensor(members, device=population.device)
    return population.map(lambda t: t.index_select(0, index))


def _stack(populations: Sequence[mc.Population]) -> mc.Population:
    return mc.stack_convnets(populations) if isinstance(populations[0], mc.ConvNet) else mc.stack(populations)


def _split(measures: dict[str, Tensor], members: Sequence[int]) -> dict[int, dict[str, Tensor]]:
    host = {name: value.cpu() for name, value in measures.items()}
    return {member: {name: value[row] for name, value in host.items()} for row, member in enumerate(members)}


@torch.no_grad()
def _measure(members: _Members, inputs: ScoringInputs, settings: ScoringSettings, profiles: bool,
             trained: bool) -> dict[str, Tensor]:
    """Every measure of every member, as tensors with a leading member axis."""
    net = members.net
    wanted = set(settings.metrics)
    chunk = settings.chunk_size
    out: dict[str, Tensor] = {}
    for probe in inputs.probes:
        logits = mc.forward(net, probe.x, chunk_size=chunk)  # [M, n, C]
        own = probe.split == "train" and members.train_labels is not None
        y = members.train_labels if own else probe.y.expand(logits.shape[0], -1)
        out[f"{probe.split}/loss"] = point_losses(logits, y)
        out[f"{probe.split}/prediction"] = logits.argmax(dim=2)
        out[f"{probe.split}/accuracy"] = (out[f"{probe.split}/prediction"] == y).to(logits.dtype)
        if "margin" in wanted:
            out[f"{probe.split}/margin"] = mc.margin(net, probe.x, y)
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


def point_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per point [M, n], from logits [M, n, C] and labels [M, n]: in float64, as
    float32 rounds a memorised point's loss below ~6e-8 to 0 (logits [30, 0]: 9.4e-14)."""
    return F.cross_entropy(logits.double().transpose(1, 2), y, reduction="none").to(logits.dtype)


def _train_measures(members: _Members, inputs: ScoringInputs, settings: ScoringSettings,
                    wanted: set[str]) -> dict[str, Tensor]:
    """Jiang et al.'s measures from the training points, with the labels each network was trained
    on (none without train points)."""
    train = next((probe for probe in inputs.probes if probe.split == "train"), None)
    if train is None:
        return {}
    net, ids = members.net, members.ids
    y = train.y if members.train_labels is None else members.train_labels
    out = {}
    for metric in MARGIN_METRICS:
        if metric in wanted:
            out[f"train/{metric}"] = getattr(mc, metric)(net, train.x, y, chunk_size=settings.chunk_size)
    search = {"samples": settings.sharpness_samples, "depth": settings.sharpness_search_depth,
              "target": settings.sharpness_target, "chunk_size": settings.chunk_size}
    for metric in SHARPNESS_METRICS:
        if metric in wanted:
            generators = _generators(ids, settings.seed, train.x.device)
            out[f"train/{metric}"] = getattr(mc, metric)(net, train.x, y, generator=generators, **search)
    return out


def _transitions(net: mc.Population, probe: Probe, settings: ScoringSettings) -> Tensor:
    common = {"k": settings.transitions_k, "chunk_size": settings.chunk_size}
    if settings.trajectory == "ellipse":
        return mc.transition_counts(net, probe.x, partners=probe.partners, **common)
    # A fresh generator with a fixed seed: every network gets the same random planes.
    generator = torch.Generator().manual_seed(settings.seed)
    return mc.transition_counts(
        net, probe.x, trajectory="circle", radius=settings.circle_radius, generator=generator, **common
    )
