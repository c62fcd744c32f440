"""What every checkpoint of a data set is scored on, prepared once per data set, settings and device:
the fixed test and train points, their transition ellipses, the profile ellipses and the slices' anchors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

import metrics_core as mc
from metrics_core.slices import plane
from sweep.scoring.settings import ScoringSettings


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


def scoring_inputs(data, settings: ScoringSettings) -> ScoringInputs:
    """The fixed points, transition partners, ellipses and slice anchors for `data` (a
    `sweep.training.data.Dataset`), on the data's device; deterministic in `settings.seed`."""
    generator = torch.Generator().manual_seed(settings.seed)
    splits = [("test", data.x_test, data.y_test, settings.points)]
    if settings.train_points:
        splits.append(("train", data.x_train, data.y_train, settings.train_points))
    probes = []
    for offset, (split, x, y, n) in enumerate(splits):
        index = fixed_points(len(x), n, settings.seed + offset)
        partners = _distinct_partners(x, torch.as_tensor(index), generator).to(x.device)
        probes.append(Probe(split, index, x[index], y[index], x[partners]))
    ellipses: dict[str, Tensor] = {}
    if settings.trajectories:
        ellipses = _ellipses(data, settings.ellipses_per_kind, settings.profile_points, generator)
    anchors = data.x_train.new_empty(0, 3, data.x_train.shape[1])
    if settings.slices:
        anchors = torch.stack([_slice_anchors(data.x_train, generator) for _ in range(settings.slice_count)])
    return ScoringInputs(tuple(probes), ellipses, anchors)


def _slice_anchors(x: Tensor, generator: torch.Generator, tries: int = 100) -> Tensor:
    """[3, d] three training points that span a plane: repeated or collinear images (a data set
    may hold copies) are drawn again, so no slice fails every network scored with it."""
    for _ in range(tries):
        anchors = x[torch.randperm(len(x), generator=generator)[:3].to(x.device)]
        try:
            plane(*anchors)
        except ValueError:
            continue
        return anchors
    raise ValueError(f"no three of the {len(x)} training points spanning a plane in {tries} draws (are the images "
                     "copies of a few?); set scoring.slices: false")


def _distinct_partners(x: Tensor, index: Tensor, generator: torch.Generator, tries: int = 100) -> Tensor:
    """`_partner_indices`, drawn again where a partner's image is its point's or the other
    partner's (a data set may hold copies): such an ellipse folds onto a segment. Without copies
    the draws, and so every later draw, are the same as without the check; a split of a few
    distinct images keeps what its last draw gave (its transitions count along such segments)."""
    partners, point = _partner_indices(index, len(x), generator), x[index.to(x.device)]
    for _ in range(tries):
        chosen = x[partners.to(x.device)]
        same = (chosen == point.unsqueeze(1)).all(-1).any(-1) | (chosen[:, 0] == chosen[:, 1]).all(-1)
        if not same.any():
            return partners
        again = same.cpu()
        partners[again] = _partner_indices(index[again], len(x), generator)
    return partners


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
    if not eligible:
        raise ValueError(f"same-class ellipses need a class with 3 training points; the train split's {len(y)} have "
                         "none: use a larger train_size, or scoring.trajectories: false")
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
