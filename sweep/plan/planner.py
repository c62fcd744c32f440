"""The plan of a sweep's trials: bundles sized to the device, each trial's share of a card, and
what the sweep will cost.

`expand(spec, card)` turns the grid into bundles. On CPUs (and with a fixed
`resources.bundle_size`) a group of same-shape networks splits into the fewest bundles of at most
that many members, sized evenly. With `bundle_size: auto` on GPUs a bundle holds as many members
as keep the card busy (their arithmetic at least `BUSY` times the step's fixed cost, from the
card's calibration in `sweep.plan.costs`) and as fit in its memory (in the part of it that a fixed
fractional `gpus_per_trial` leaves each trial).

`gpu_shares(spec, bundles, card)` gives each trial its share of one card. Ray 2.60 places a
fractional request on a single card and never lets the shares on a card add up past 1 (checked in
tests/test_planner.py on a node Ray is told has 2 GPUs), so a share at least the bundle's share
of the card's memory keeps every card within its memory, whatever shapes meet on it. A share is
also at least 1/K, K the trials it takes to keep the card busy while each waits on its host.

Nothing here imports torch or Ray: `sweep run --dry-run` shows the plan on any machine.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from sweep.plan import costs
from sweep.plan.datasets import dataset_info, whole_dataset_info
from sweep.plan.networks import (SHARED_IN_BUNDLE, BundleConfig, NetworkConfig, activation_sizes, augmentation_of,
                                 conv_layers, merged_batch_sizes, networks, param_count)
from sweep.plan.spec import AUTO, Budget, SpecError, SweepSpec

CPU_BUNDLE_SIZE = 16  # `bundle_size: auto` on CPUs: what every CPU sweep used before auto
BUSY = 4  # a bundle's arithmetic per step, in multiples of the step's fixed (host) cost
MAX_TRIALS_PER_CARD = 16
USABLE = 0.92  # of a card's memory: the rest is the allocator's slack and fragmentation
CONTEXT_BYTES = 768 * 2**20  # the CUDA context and torch's kernels, per process
EVAL_BYTES = 2 * 32 * 2**20  # train-accuracy chunks (metrics_core's CPU chunk budget, 2 buffers)
SCORING_CHUNK_BYTES = 4 * 512 * 2**20  # the metric core's GPU chunks: a few of 2**27 floats live
SHARE_STEP = 1e-4  # Ray's resolution for fractional resources
SCORING_BATCH = 8  # most checkpoints a GPU scoring actor scores in one call (sweep.scoring.actors)
SCORING_ROOM = 0.25  # of a card, most for the weights of a scoring call (fewer checkpoints a call beyond)
# Copies of each checkpoint's weights a scoring call holds at once: on the device, stacked with the
# others, its initial weights (built, then stacked) and the measures' temporaries; measured with
# every metric on (tests/test_scoring.py), 7–8.6 beside the loaded copy.
SCORING_COPIES = 10
_OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}


@dataclass(frozen=True)
class Card:
    """The GPU a plan is sized for."""

    memory_gib: float
    source: str  # where the size came from, for the dry run

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * 2**30 * USABLE


@functools.cache
def local_cards() -> tuple[Card, ...]:
    """This machine's cards (nvidia-smi, so the driver never imports torch), asked once."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    cards = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
    return tuple(Card(float(mib) / 1024, f"this machine's {name.strip()}") for name, mib in cards)


def local_card() -> Card | None:
    """The smallest card this machine has."""
    return min(local_cards(), key=lambda card: card.memory_gib, default=None)


def local_memory_bytes() -> int | None:
    """This machine's physical memory; None where the OS does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None
    return total if total > 0 else None  # -1: the OS does not know


def local_problems(spec: SweepSpec, bundles: list[BundleConfig], cpus: float, gpus: int,
                   memory_bytes: int | None, scoring: bool = True) -> list[str]:
    """Why a run on this machine alone (`cpus` cores, `gpus` cards, `memory_bytes` of memory) could
    not finish: Ray leaves a trial or an actor that asks more of a node than it has pending for
    ever, and a CPU bundle larger than the memory fails as it trains. Scoring actors count only
    where `scoring` starts them."""
    res, problems = spec.resources, []
    actors = scoring and res.scoring_actors != 0
    asks = [("cpus_per_trial", res.cpus_per_trial, cpus, "CPU core(s)"),
            *([("cpus_per_scoring_actor", res.cpus_per_scoring_actor, cpus, "CPU core(s)")] if actors else [])]
    if gpus:  # no card at all is refused on its own, for the spec as a whole
        asks += [("gpus_per_trial", res.gpus_per_trial, gpus, "GPU(s)"),
                 *([("gpus_per_scoring_actor", res.gpus_per_scoring_actor, gpus, "GPU(s)")] if actors else [])]
    for key, asked, have, unit in asks:
        if asked != AUTO and asked > have:
            problems.append(f"resources.{key}: {asked:g}, but this machine has {have:g} {unit} and Ray would never "
                            f"start one that asks more; use at most {have:g}, or pass --address of a cluster whose "
                            "nodes have that many")
    sized = [(need, bundle) for bundle in bundles if (need := estimate_bundle_bytes(bundle)) is not None]
    if res.uses_gpus or not memory_bytes or not sized:
        return problems
    need, bundle = max(sized, key=lambda pair: pair[0])
    if need > memory_bytes:
        gib, alone = 2**30, estimate_bundle_bytes(BundleConfig(bundle.members[:1]))
        fix = ("use smaller widths or batch sizes" if alone > memory_bytes else
               f"one network needs {alone / gib:.1f} GiB: set resources.bundle_size to fewer networks")
        problems.append(f"a bundle of {len(bundle.members)} network(s) {_shape_name(bundle)} needs about "
                        f"{need / gib:.1f} GiB to train, more than this machine's {memory_bytes / gib:.1f} GiB "
                        f"of memory holds; {fix}, or pass --address of a cluster with bigger nodes")
    return problems


def card_for(spec: SweepSpec, gpu_memory_gib: float | None = None, *, assume: bool = False) -> Card | None:
    """The card to plan for: `--gpu-memory`, else `resources.gpu_memory_gib`, else this machine's
    card; with `assume` (a dry run) the reference card's size. None for CPU sweeps, and when the
    size is unknown (the caller says how to give it)."""
    if not spec.resources.uses_gpus:
        return None
    if gpu_memory_gib is not None:
        return Card(gpu_memory_gib, "--gpu-memory")
    if spec.resources.gpu_memory_gib is not None:
        return Card(spec.resources.gpu_memory_gib, "resources.gpu_memory_gib")
    card = local_card()
    if card is None and assume:
        reference = costs.reference_gpu()
        card = Card(reference.memory_gib, f"assumed: an {reference.name}; set resources.gpu_memory_gib "
                                          "or --gpu-memory for your cards")
    return card


# ---- memory ---------------------------------------------------------------------------------


def _shape(net: NetworkConfig) -> tuple[int, list[int], int, int] | None:
    """Parameters, values per example of the input and each layer's output, training-set size and
    test-set size; None for an image folder (unknown)."""
    info = dataset_info(net.dataset)
    if info.image_shape is None:
        return None
    return param_count(net, info), activation_sizes(net, info), info.train_size, info.test_size


def member_bytes(net: NetworkConfig) -> int | None:
    """Device memory one more member of a training bundle takes.

    Parameter-sized buffers: the population stacks, the live buffer, its gradient, the
    per-element learning rate, the update's temporary, a checkpoint's copy and the optimizer's
    slots; one step's activations (forward and backward); its labels, epoch order and
    augmentation draws.
    """
    shape = _shape(net)
    if shape is None:
        return None
    params, sizes, n, _ = shape
    batch = min(net.batch_size or n, n)
    per_example = 16 + (24 if net.augmentation else 0)
    return 4 * (params * (6 + _OPTIMIZER_SLOTS[net.optimizer]) + 3 * batch * sum(sizes)) + per_example * n


def shared_bytes(net: NetworkConfig) -> int | None:
    """Device memory of a training bundle whatever its size: the data set and evaluation chunks."""
    shape = _shape(net)
    if shape is None:
        return None
    _, sizes, n, n_test = shape
    return 4 * (n + n_test + 2) * sizes[0] + 8 * (n + n_test) + EVAL_BYTES


def estimate_bundle_bytes(bundle: BundleConfig, card: Card | None = None) -> int | None:
    """Device memory of a training bundle (plus the process's CUDA context on a card); None when
    the data set's size is unknown."""
    member, shared = member_bytes(bundle.members[0]), shared_bytes(bundle.members[0])
    if member is None:
        return None
    return shared + len(bundle.members) * member + (CONTEXT_BYTES if card else 0)


def scoring_bytes(bundles: list[BundleConfig], batch: int) -> int:
    """Device memory of a scoring actor that scores `batch` checkpoints a call: its context,
    chunks, their weights and every data set it may hold (it keeps each one it has scored)."""
    data = {b.dataset: shared_bytes(b.members[0]) or 0 for b in bundles}
    return CONTEXT_BYTES + SCORING_CHUNK_BYTES + scoring_weight_bytes(bundles, batch) + sum(data.values())


def scoring_batch(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None) -> int:
    """Checkpoints a GPU scoring actor takes in one call: the most, up to `SCORING_BATCH`, whose
    weights fit in `SCORING_ROOM` of the card and whose actor fits beside the largest trial (or,
    with a fixed gpus_per_scoring_actor, in that share); one where none does (then
    `check_scoring_room` refuses the plan when the actor cannot share a card with a trial)."""
    fixed = spec.resources.gpus_per_scoring_actor
    if fixed == 0:  # a CPU actor scores one a call
        return 1
    if card is None:
        return SCORING_BATCH
    trial = max(gpu_shares(spec, bundles, card).values(), default=0.0)

    def fits(batch: int) -> bool:
        need = scoring_bytes(bundles, batch)
        if fixed != AUTO:
            return need <= fixed * card.usable_bytes
        return (scoring_weight_bytes(bundles, batch) <= SCORING_ROOM * card.usable_bytes
                and _share(need, card) + trial <= 1 + 1e-9)

    return next((batch for batch in range(SCORING_BATCH, 1, -1) if fits(batch)), 1)


def scoring_weight_bytes(bundles: list[BundleConfig], checkpoints: int = SCORING_BATCH) -> int:
    """The weights a scoring call holds: `SCORING_COPIES` of `checkpoints` of the largest bundle."""
    largest = max((len(b.members) * shape[0] for b in bundles if (shape := _shape(b.members[0]))), default=0)
    return 4 * SCORING_COPIES * checkpoints * largest


# ---- bundles --------------------------------------------------------------------------------


def _group_key(x: NetworkConfig | BundleConfig) -> tuple:
    """What the networks of one bundle share."""
    return tuple(getattr(x, k) for k in SHARED_IN_BUNDLE)


def _groups(spec: SweepSpec) -> list[list[NetworkConfig]]:
    groups: dict[tuple, list[NetworkConfig]] = {}
    for net in networks(spec):
        groups.setdefault(_group_key(net), []).append(net)
    return list(groups.values())


def members_per_bundle(group: list[NetworkConfig], spec: SweepSpec, card: Card | None) -> int:
    """Most members per bundle for a group of same-shape networks (module docstring)."""
    size = spec.resources.bundle_size
    if size != AUTO:
        return size
    if card is None:
        return CPU_BUNDLE_SIZE
    first = group[0]
    member, shared = member_bytes(first), shared_bytes(first)
    if member is None:  # an image folder: sizes known only once loaded
        return CPU_BUNDLE_SIZE
    share = spec.resources.gpus_per_trial
    # A fixed share below one card lets Ray put floor(1/share) trials on a card: each gets that part.
    room = card.usable_bytes / math.floor(1 / share + 1e-9) if share != AUTO and share < 1 else card.usable_bytes
    fit = math.floor((room - CONTEXT_BYTES - shared) / member)
    bundle = BundleConfig((first,))
    rates, _ = costs.training_rates(costs.reference_gpu(), first.precision, first.architecture)
    busy = math.ceil(BUSY * rates.step_overhead_s / rates.member_step_s(costs.step_flops(bundle)))
    return max(1, min(len(group), fit, busy))


def expand(spec: SweepSpec, card: Card | None = None) -> list[BundleConfig]:
    """The grid → networks → bundles (module docstring); raises SpecError when a network, or a
    bundle of the size the spec fixes, cannot fit on `card`."""
    check_ellipse_anchors(spec)
    bundles = []
    for group in _groups(spec):
        check_batches(group[0])
        limit = members_per_bundle(group, spec, card)
        count = math.ceil(len(group) / limit)
        for part in np.array_split(np.arange(len(group)), count):
            bundles.append(BundleConfig(tuple(group[i] for i in part)))
    if card is not None:
        check_fits(spec, bundles, card)
    return bundles


def check_ellipse_anchors(spec: SweepSpec) -> None:
    """Refuse a train split too small for scoring's same-class ellipses, which pass through three
    training points of one class: only 2·C + 1 points of C classes are sure to hold such a class.
    (Otherwise each checkpoint's scoring would fail, once training is done.)"""
    if not spec.scoring.trajectories:
        return
    for data in spec.datasets:
        info = dataset_info(data)
        n, classes = info.train_size, info.num_classes
        if n and classes and n < 2 * classes + 1:
            raise SpecError(
                f"datasets: {data.name} with {n} training examples of {classes} classes may have no class with "
                "three, through which scoring draws its same-class ellipses; use a train_size of at least "
                f"{2 * classes + 1}, or scoring.trajectories: false")


def check_batches(net: NetworkConfig) -> None:
    """Refuse a batch of one example where batch normalisation sees a 1×1 map: its batch
    statistics would be of one value per channel, which torch refuses (as it would for the network
    trained alone), and only once the trial reaches that batch."""
    info = dataset_info(net.dataset)
    n = info.train_size
    if not (net.architecture == "cnn" and net.batch_norm and n and info.image_shape):
        return
    normalised = [layer.shape for layer in conv_layers(net, info.image_shape, info.num_classes) if layer.kind == "norm"]
    if min(h * w for _, h, w in normalised) > 1:
        return
    batch = min(net.batch_size or n, n)
    if batch == 1 or n % batch == 1:
        what = "batch size 1" if batch == 1 else f"{n} training examples in batches of {batch} leave a last batch of 1"
        raise SpecError(
            f"grid.batch_sizes: {what}, and batch normalisation of {_shape_name(BundleConfig((net,)))} sees "
            "1×1 maps, where one example gives no batch statistics; use another batch size (or train_size), "
            "or turn batch_norm off")


def _shape_name(bundle: BundleConfig) -> str:
    return f"{bundle.dataset.name} {layers_name(bundle)}"


def layers_name(net: NetworkConfig | BundleConfig) -> str:
    """784→256×3 for fc networks; vgg 16c×2b×2s k3 max flatten (channels, blocks per stage, stages,
    kernel, pooling, head; bn with batch normalisation) for cnn ones."""
    if net.architecture == "fc":
        return f"{dataset_info(net.dataset).input_dim or '?'}→{net.width}×{net.depth}"
    return (f"{net.family} {net.width}c×{net.depth}b×{net.stages}s k{net.kernel_size} {net.pooling} {net.head}"
            + (" bn" if net.batch_norm else ""))


def check_fits(spec: SweepSpec, bundles: list[BundleConfig], card: Card) -> None:
    """Refuse, before anything starts, a network or bundle that the card cannot hold, and a fixed
    GPU share that lets Ray put more bundles on a card than its memory holds."""
    gib = 2**30
    for bundle in bundles:
        need = estimate_bundle_bytes(bundle, card)
        if need is None:
            continue
        if need > card.usable_bytes:
            alone = estimate_bundle_bytes(BundleConfig(bundle.members[:1]), card)
            if alone > card.usable_bytes:
                raise SpecError(
                    f"grid: one network {_shape_name(bundle)} ({bundle.optimizer}, batch {bundle.batch_size or 'full'}) "
                    f"needs about {alone / gib:.1f} GiB to train, more than the {card.usable_bytes / gib:.1f} GiB a "
                    f"trial may use of the {card.memory_gib:g} GiB card ({card.source}; the rest is the allocator's slack)"
                    "; use smaller widths or batch sizes, or bigger cards")
            raise SpecError(
                f"resources.bundle_size: a bundle of {len(bundle.members)} networks {_shape_name(bundle)} needs about "
                f"{need / gib:.1f} GiB, more than the {card.memory_gib:g} GiB card ({card.source}) holds; "
                "use bundle_size: auto, or a smaller number")
    share = spec.resources.gpus_per_trial
    if share == AUTO or share >= 1:
        return
    per_card = math.floor(1 / share + 1e-9)
    largest = sorted((estimate_bundle_bytes(b, card) or 0 for b in bundles), reverse=True)[:per_card]
    if sum(largest) > card.usable_bytes:
        raise SpecError(
            f"resources.gpus_per_trial: {share:g} lets Ray place {per_card} trials on one card, and {len(largest)} "
            f"of this sweep's bundles need {sum(largest) / gib:.1f} GiB together, more than the "
            f"{card.memory_gib:g} GiB card ({card.source}) holds; use gpus_per_trial: auto (a share per bundle "
            "from its memory), or a larger share")


def _share(nbytes: float, card: Card, floor: float = SHARE_STEP) -> float:
    """The memory's share rounded up to Ray's step (so it covers the bytes), and `floor` rounded
    down (1/3 must let three trials share a card), whichever is larger."""
    memory = math.ceil(nbytes / card.usable_bytes / SHARE_STEP - 1e-9) * SHARE_STEP
    floor = math.floor(floor / SHARE_STEP + 1e-9) * SHARE_STEP
    return round(min(1.0, max(memory, floor, SHARE_STEP)), 4)


def trials_to_keep_busy(bundle: BundleConfig) -> int:
    """Trials sharing a card that it takes to hide each one's fixed step cost behind the others'
    arithmetic (the reference card's calibration)."""
    flops = costs.step_flops(bundle)
    if flops is None:
        return 1
    rates, _ = costs.training_rates(costs.reference_gpu(), bundle.precision, bundle.architecture)
    compute = len(bundle.members) * rates.member_step_s(flops)
    return min(MAX_TRIALS_PER_CARD, math.ceil((rates.step_overhead_s + compute) / compute))


def gpu_shares(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None) -> dict[str, float]:
    """bundle_id -> the trial's share of one card (0 on CPUs): the spec's number, or with `auto`
    the larger of its memory's share and 1/trials_to_keep_busy."""
    share = spec.resources.gpus_per_trial
    if share != AUTO:
        return {b.bundle_id: float(share) for b in bundles}
    if card is None:
        raise SpecError("resources.gpus_per_trial: auto needs the cards' memory; set resources.gpu_memory_gib "
                        "or pass --gpu-memory")
    out = {}
    for b in bundles:
        need = estimate_bundle_bytes(b, card)
        # An image folder's size is known only once loaded: give its trials a whole card.
        out[b.bundle_id] = 1.0 if need is None else _share(need, card, 1 / trials_to_keep_busy(b))
    return out


def check_scoring_room(spec: SweepSpec, bundles: list[BundleConfig], shares: dict[str, float], scoring: float,
                       *, scored: bool = True) -> None:
    """Refuse a trial that cannot share a card with a scoring actor when every card gets one
    (`scoring_actors: auto`): the actors start before the trials, and Ray would leave such a
    trial waiting for ever, without a word."""
    if not scored or spec.resources.scoring_actors != AUTO or not scoring:
        return
    crowded = [b for b in bundles if shares.get(b.bundle_id, 0.0) + scoring > 1 + 1e-9]
    if crowded:
        bundle = max(crowded, key=lambda b: shares[b.bundle_id])
        raise SpecError(
            f"resources: a trial of {len(bundle.members)} networks {_shape_name(bundle)} takes {shares[bundle.bundle_id]:g} "
            f"of a card and each card's scoring actor {scoring:g}, more than one card together ({len(crowded)} "
            "bundle(s) so), so Ray would never start it; use "
            + ("a smaller resources.bundle_size, " if len(bundle.members) > 1 else "bigger cards, ")
            + "a smaller gpus_per_scoring_actor, or scoring_actors: 0 and `sweep score` once training ends")


def scoring_share(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None) -> float:
    """A scoring actor's share of a card: the spec's number, or with `auto` its memory's share."""
    share = spec.resources.gpus_per_scoring_actor
    if share != AUTO:
        return float(share)
    if card is None:
        raise SpecError("resources.gpus_per_scoring_actor: auto needs the cards' memory; set "
                        "resources.gpu_memory_gib or pass --gpu-memory")
    return _share(scoring_bytes(bundles, scoring_batch(spec, bundles, card)), card)


def plan_notes(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None) -> list[str]:
    """What the plan does that the spec does not say and a run should print: batch sizes merged
    into a full batch, more points asked for than a split holds, heads that make one network twice,
    and a fixed scoring share below the memory one checkpoint's scoring takes."""
    notes = merged_batch_sizes(spec) + points_notes(spec.scoring.points, spec.scoring.train_points,
                                                    [b.dataset for b in bundles]) + one_pixel_heads(bundles)
    share = spec.resources.gpus_per_scoring_actor
    if card and spec.resources.scoring_actors != 0 and share != AUTO and share > 0:
        need = scoring_bytes(bundles, 1)
        if need > share * card.usable_bytes:
            notes.append(
                f"resources.gpus_per_scoring_actor: {share:g} of the {card.memory_gib:g} GiB card holds "
                f"{share * card.usable_bytes / 2**30:.1f} GiB, less than the about {need / 2**30:.1f} GiB a scoring actor "
                "takes for one checkpoint of this sweep's largest bundle (its context, chunks, data sets and weights), "
                "so it may run out of memory; use auto (its share from that memory) or a larger share")
    return notes


def one_pixel_heads(bundles: list[BundleConfig]) -> list[str]:
    """Heads `gap` and `flatten` on a last feature map of one pixel make one network twice (the
    same layers, parameters and initial weights) under two ids."""
    nets = [net for b in bundles for net in b.members if net.architecture == "cnn"]
    if not {"gap", "flatten"} <= {net.head for net in nets}:
        return []
    shapes = collections.Counter()
    for net in nets:
        info = dataset_info(net.dataset)
        if net.head == "flatten" and info.image_shape:
            before_head = conv_layers(net, info.image_shape, info.num_classes)[-3].shape
            if before_head[1:] == (1, 1):
                shapes[" ".join(part for part in layers_name(net).split() if part != "flatten")] += 1
    if not shapes:
        return []
    return [f"grid.heads: gap and flatten are one network where the last feature map is 1×1 pixel, as for "
            f"{', '.join(shapes)}: {sum(shapes.values())} network(s) train twice under two ids; keep one head for "
            "them, or use fewer stages"]


def points_notes(points: int, train_points: int, datasets) -> list[str]:
    """Where `points` or `train_points` is more than a data set's split holds: every point of that
    split is scored instead (sweep.scoring.inputs.fixed_points), which the tables' counts show."""
    notes = []
    for data in dict.fromkeys(datasets):
        info = dataset_info(data)
        for key, asked, held, split in (("points", points, info.test_size, "test"),
                                        ("train_points", train_points, info.train_size, "training")):
            if held and asked > held:
                notes.append(f"scoring.{key}: {asked} is more than the {held} {split} points of {data.name}, "
                             f"so all {held} are scored")
    return list(dict.fromkeys(notes))  # bundles share data sets, and data sets of one name may share a split


def estimate_bundle_work(bundle: BundleConfig, budget: Budget) -> float:
    """Relative cost of training a bundle to its budget (members × multiply-adds per example ×
    examples), for ordering bundles; an image folder's unknown sizes are taken as the width."""
    info = dataset_info(bundle.dataset)
    net = bundle.members[0]
    n = info.train_size or net.width
    examples = budget.max_epochs * n
    if budget.max_steps:
        examples = min(examples, budget.max_steps * min(bundle.batch_size or n, n))
    size = param_count(net, info) if info.image_shape else net.width
    return len(bundle.members) * size * examples


# ---- the dry run's text ---------------------------------------------------------------------


def _mib(nbytes: int | None) -> str:
    return "unknown (image_folder)" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB"


def trials_per_card(shares: dict[str, float]) -> dict[str, int]:
    return {b: max(1, math.floor(1 / s + 1e-9)) if 0 < s <= 1 else 1 for b, s in shares.items()}


def plan_summary(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None = None,
                 cpus: int | None = None) -> str:
    """Text for `sweep run --dry-run`: networks, bundles, the choice per shape (members, trials
    per card, share, memory) and the projected time on the spec's resources and on the reference
    card, with its assumptions."""
    shares = gpu_shares(spec, bundles, card) if card else {b.bundle_id: 0.0 for b in bundles}
    per_card = trials_per_card(shares)
    total = sum(len(b.members) for b in bundles)
    size = spec.resources.bundle_size
    shape_width = max(16, *(len(layers_name(b)) + 2 for b in bundles))
    lines = [
        f"sweep {spec.name}: {total} networks in {len(bundles)} bundles "
        + (f"(at most {size} per bundle)" if size != AUTO else "(bundle_size auto: sized per shape)"),
        f"data: {', '.join(_data_label(d) for d in spec.datasets)}; budget: {spec.budget.max_epochs} "
        f"epochs" + (f" / {spec.budget.max_steps} steps" if spec.budget.max_steps else "")
        + (", stop at 100% train accuracy" if spec.budget.stop_at_full_train_acc else "")
        + f"; training precision {spec.training.precision}"
        + (f"; random labels {spec.training.random_labels.replace('_', ' ')}" if any(spec.grid.random_label_fractions)
           else ""),
        f"resources per trial: {spec.resources.cpus_per_trial:g} CPU, "
        + (f"a share of one {card.memory_gib:g} GiB card ({card.source})" if card else "no GPU")
        + f"; scoring actors: {spec.resources.scoring_actors}"
        + (" (one per GPU of the cluster)" if spec.resources.scoring_actors == AUTO else "")
        + (f" at {scoring_share(spec, bundles, card):g} of a card each, up to {scoring_batch(spec, bundles, card)} "
           "checkpoint(s) a call" if card and spec.resources.scoring_actors else ""),
        "",
        f"{'data set':<14}{'shape':<{shape_width}}{'activation':<11}{'optimizer':<10}{'batch':>6}{'aug':>9}"
        f"{'bundles':>8}{'members':>9}{'per card':>9}{'GPU share':>10}{'memory/bundle':>15}",
    ]
    by_shape: dict[tuple, list[BundleConfig]] = {}
    for b in bundles:
        by_shape.setdefault(_group_key(b), []).append(b)
    peak = 0
    for group in by_shape.values():
        b = group[0]
        members = "/".join(str(s) for s in sorted({len(x.members) for x in group}))
        memory = max((estimate_bundle_bytes(x, card) or 0) for x in group) or None
        peak = max(peak, memory or 0)
        share = max(shares[x.bundle_id] for x in group)
        trials = min(per_card[x.bundle_id] for x in group)
        lines.append(f"{b.dataset.name:<14}{layers_name(b):<{shape_width}}{b.activation:<11}"
                     f"{b.optimizer:<10}{b.batch_size or 'full':>6}{_augmentation_label(b):>9}"
                     f"{len(group):>8}{members:>9}{(trials if card else '-'):>9}{(f'{share:g}' if card else '-'):>10}"
                     f" {_mib(memory):>14}")
    lines += ["", f"largest bundle needs about {_mib(peak)} of {'card' if card else 'device'} memory" if peak
              else "the bundles' memory is unknown until their image folder can be read", ""]
    lines += [f"note: {note}" for note in plan_notes(spec, bundles, card)]
    lines += projection_lines(spec, bundles, card, cpus)
    return "\n".join(lines)


def _data_label(data) -> str:
    """A data set as the dry run names it: with the part of each split used, where not all."""
    info = whole_dataset_info(data)
    parts = [f"{used} of {whole} {split}" if whole else f"{used} {split}"
             for split, used, whole in (("train", data.train_size, info.train_size),
                                        ("test", data.test_size, info.test_size)) if used]
    return data.name + (f" at {data.path}" if data.path else "") + (f" ({', '.join(parts)} examples)" if parts else "")


def _augmentation_label(bundle: BundleConfig) -> str:
    """`no`, or the largest shift and whether images are flipped (`4px+flip`); `yes` for the usual
    shift of an image folder that cannot be read here."""
    if not bundle.augmentation:
        return "no"
    info, net = dataset_info(bundle.dataset), bundle.members[0]
    if net.augmentation_shift is None and info.image_shape is None:
        return "yes"
    shift, flips = augmentation_of(net, info.image_shape, info.hflip)
    return (f"{shift}px" + ("+flip" if flips else "")) if shift else "flip"


def reference_projection(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None) -> costs.Projection:
    """The sweep on one reference card, its bundles sharing it as the planner's shares allow and
    as many run at once: no more than the bundles, or `resources.max_concurrent_trials`."""
    per_card = trials_per_card(gpu_shares(spec, bundles, card)) if card else {}
    at_once = min(len(bundles), spec.resources.max_concurrent_trials or len(bundles))
    per_card = {bundle_id: min(trials, at_once) for bundle_id, trials in per_card.items()}
    return costs.project(bundles, spec.budget, spec.scoring, costs.reference_gpu(), per_card,
                         spec.checkpoints.every_epochs)


def cpu_projection(spec: SweepSpec, bundles: list[BundleConfig]) -> costs.Projection:
    """The sweep on the reference CPU's cores, each trial on its `cpus_per_trial`."""
    return costs.project(bundles, spec.budget, spec.scoring, costs.reference_cpu(), {}, spec.checkpoints.every_epochs)


def cpu_projection_text(spec: SweepSpec, bundles: list[BundleConfig], run: costs.Projection, cpus: int | None) -> str:
    """`run` spread over `cpus` cores, as many trials at once as their `cpus_per_trial` allow."""
    cores = max(1, cpus or 1)
    trials = min(max(1, math.floor(cores / max(spec.resources.cpus_per_trial, 1e-9))), len(bundles))
    start = run.device.sweep_start_s
    return (f"on {cores} CPU core(s), {trials} trial(s) at once: training about {costs.hours(run.training_s / trials)} "
            f"({costs.hours(run.training_budget_s / trials)} if every network runs its budget), "
            f"scoring about {costs.hours(run.scoring_s / cores)} of all cores"
            + (f", and about {costs.hours(start)} to start Ray and Tune, the trials and the end (a local sweep that "
               "trains nothing)" if start else ""))


def projection_lines(spec: SweepSpec, bundles: list[BundleConfig], card: Card | None,
                     cpus: int | None) -> list[str]:
    """The projected time on the spec's resources and on one reference card, and how."""
    reference = costs.reference_gpu()
    gpu = reference_projection(spec, bundles, card)
    lines = ["projected time (sweep.plan.costs; calibration in sweep/plan/calibration.json):"]
    if not card:
        run = cpu_projection(spec, bundles)
        lines.append("  " + cpu_projection_text(spec, bundles, run, cpus))
    lines.append(
        f"  on one {reference.name}: {costs.hours(gpu.total_s)} of the card "
        f"({costs.hours(gpu.total_budget_s)} if every network runs its budget): training "
        f"{costs.hours(gpu.training_s)}, scoring {costs.hours(gpu.scoring_s)}; N cards take 1/N of it")
    sources = collections.Counter(costs.expected_epochs(m, spec.budget)[1] for b in bundles for m in b.members)
    lines += [
        "  how: a step of M members takes overhead + M·(member + F / rate), F = 6·batch·params (fc) or 3·batch·forward "
        "FLOPs (cnn), fitted to measured steps, and each epoch a forward pass over the training set (the stopping check);",
        f"  trials sharing a card overlap their overheads; a bundle steps until its last member stops; "
        f"{sources['measured']} of {sources.total()} networks",
        "  at the mean measured epochs to 100% train accuracy for their architecture, data, label noise, "
        "augmentation and batching (the convergence table; where measured, for their width, depth, activation, "
        "optimizer or learning rate),",
        f"  {sources['other widths']} at those of an entry measured at other widths (an extrapolation), "
        f"{sources['not converging']} measured not to reach it (at their budget), "
        f"{sources['budget']} not measured (at their budget);",
        "  scoring: FLOPs of the spec's metrics at every checkpoint, at the measured scoring rate",
        f"  {reference.name}: {reference.measured}",
    ]
    devices = [reference] if card else [reference, costs.reference_cpu()]
    if not card:
        lines.append(f"  CPU: {devices[1].measured}")
    if spec.architecture == "cnn":
        lines += [f"  {cal.name}, convolutional networks: {cal.conv_measured}" for cal in devices if cal.conv_measured]
    notes = set(gpu.notes) | (set() if card else set(run.notes))
    lines += [f"  note: {note}" for note in sorted(notes)]
    if gpu.unknown_bundles:
        lines.append(f"  {gpu.unknown_bundles} bundle(s) on an image folder are not counted (sizes unknown until loaded)")
    return lines
