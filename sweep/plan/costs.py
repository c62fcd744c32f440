"""What a sweep costs before it runs: training and scoring time from calibrated rates.

A device's calibration (`sweep/plan/calibration.json`, measured by `bench/calibrate.py`) holds, per
architecture (fully-connected steps; convolutional ones under its `cnn` key) and training
precision, the fixed cost of one population step (`step_overhead_ms`: kernel launches and the
autograd graph, paid whatever the bundle's size), a cost per member and step beyond its
arithmetic (`member_ms`: small kernels whose size follows M; 0 where not measured) and the rate
of the arithmetic (`tflops`), fitted to measured steps, so a step of M members of F FLOPs each
takes

    t(M) = step_overhead + M · (member + F / rate),      F = 6 · batch · parameters

(forward 2, backward 4 FLOPs per parameter and example; a convolutional network's F is three
forward passes of the batch). Scoring is FLOPs of the metrics at the spec's settings over
`scoring_tflops`; a convolutional network's forward passes that compare activation codes
(transitions, profiles, slices) run at their own rate (`cnn.codes_tflops`), far below its
Jacobians' (every unit's piece is kept and compared at every trajectory point). Steps come from
the budget (an upper bound) or from the convergence table (the mean measured epochs to 100% train
accuracy for an architecture, data set, label noise, augmentation and batching, narrowed where
measured to widths, depths, activations, optimizers or learning rates, an entry that names no
width listing the widths it was measured at; networks with no measurement, or measured not to
converge, are counted at their budget).

No torch and no Ray: `sweep run --dry-run` and `sweep presets` use it on any machine.

    >>> from sweep.plan.costs import calibration, step_seconds
    >>> h200 = calibration("h200")
    >>> round(step_seconds(h200, "fp32", members=64, flops_per_member=257e6) * 1e3, 2)  # ms
    1.05
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources

from sweep.plan.datasets import dataset_info
from sweep.plan.networks import (BundleConfig, NetworkConfig, augmentation_of, forward_flops, layer_sizes,
                                 param_count)
from sweep.plan.spec import Budget
from sweep.scoring.settings import MARGIN_METRICS, PROFILE_TAGS, SHARPNESS_METRICS, UNTRAINED_TAGS, ScoringSettings

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Rates:
    step_overhead_s: float  # per population step, whatever its size
    member_s: float  # per member and step beyond its arithmetic (small kernels that scale with M)
    flops_per_s: float

    def member_step_s(self, flops: float) -> float:
        """One member's share of a step: its arithmetic and its per-member cost."""
        return self.member_s + flops / self.flops_per_s


@dataclass(frozen=True)
class Calibration:
    """Measured rates of one device: a card, or one CPU thread (a trial's)."""

    key: str
    name: str
    kind: str  # "gpu" or "cpu"
    memory_gib: float | None
    matmul_tflops: float  # float32 matmul rate measured in the same run
    training: dict[str, Rates]  # precision -> rates of fully-connected steps
    scoring_flops_per_s: float
    measured: str  # card, date, commit and how
    # Convolutional networks' steps and scoring, where measured (else the fully-connected rates).
    conv_training: dict[str, Rates] = field(default_factory=dict)
    conv_scoring_flops_per_s: float | None = None  # Jacobian norms
    conv_codes_flops_per_s: float | None = None  # forward passes whose activation codes are compared
    conv_measured: str = ""
    # A local sweep's own seconds beside its training and scoring (Ray's and Tune's start, the
    # trials' start, checkpoints, the end), where measured: what a sweep that trains nothing takes.
    sweep_start_s: float | None = None


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads((resources.files("sweep.plan") / CALIBRATION_FILE).read_text())


def _rates(training: dict) -> dict[str, Rates]:
    return {p: Rates(r["step_overhead_ms"] / 1e3, r.get("member_ms", 0.0) / 1e3, r["tflops"] * 1e12)
            for p, r in training.items()}


def calibration(key: str) -> Calibration:
    entry = _table()["devices"][key]
    conv = entry.get("cnn", {})
    return Calibration(
        key=key,
        name=entry["name"],
        kind=entry["kind"],
        memory_gib=entry.get("memory_gib"),
        matmul_tflops=entry["matmul_tflops"],
        training=_rates(entry["training"]),
        scoring_flops_per_s=entry["scoring_tflops"] * 1e12,
        measured=entry["measured"],
        conv_training=_rates(conv.get("training", {})),
        conv_scoring_flops_per_s=conv["scoring_tflops"] * 1e12 if "scoring_tflops" in conv else None,
        conv_codes_flops_per_s=conv["codes_tflops"] * 1e12 if "codes_tflops" in conv else None,
        conv_measured=conv.get("measured", ""),
        sweep_start_s=entry.get("sweep_start", {}).get("seconds"),
    )


def reference_gpu() -> Calibration:
    return calibration(_table()["reference_gpu"])


def reference_cpu() -> Calibration:
    return calibration(_table()["reference_cpu"])


def training_rates(cal: Calibration, precision: str, architecture: str = "fc") -> tuple[Rates, str]:
    """The step rates of `architecture` in `precision`, and a note when they are not what was
    measured for it (another precision's, or fully-connected steps' for a convolutional network)."""
    table, note = cal.training, ""
    if architecture == "cnn":
        if cal.conv_training:
            table = cal.conv_training
        else:
            note = f"convolutional steps not calibrated on {cal.name}: fully-connected rates used"
    if precision in table:
        return table[precision], note
    return table["fp32"], "; ".join(filter(None, [note, f"{precision} not calibrated on {cal.name}: fp32 rates used"]))


def step_seconds(cal: Calibration, precision: str, *, members: int, flops_per_member: float,
                 architecture: str = "fc") -> float:
    rates, _ = training_rates(cal, precision, architecture)
    return rates.step_overhead_s + members * rates.member_step_s(flops_per_member)


# ---- FLOPs ----------------------------------------------------------------------------------


def _sizes(bundle: BundleConfig) -> list[int] | None:
    info = dataset_info(bundle.dataset)
    if info.image_shape is None:
        return None
    return layer_sizes(bundle.members[0], info.input_dim, info.num_classes)


def train_size(net: NetworkConfig | BundleConfig) -> int | None:
    return dataset_info(net.dataset).train_size


def _batch(bundle: BundleConfig) -> int:
    n = train_size(bundle) or 1
    return min(bundle.batch_size or n, n)


def step_flops(bundle: BundleConfig) -> float | None:
    """FLOPs of one member's training step: 6 · batch · parameters (fc); forward, and backward
    at twice its cost, of the batch (cnn, whose weights are reused at every pixel)."""
    info, n = dataset_info(bundle.dataset), train_size(bundle)
    if info.image_shape is None or n is None:
        return None
    batch = min(bundle.batch_size or n, n)
    if bundle.architecture == "cnn":
        return 3.0 * batch * forward_flops(bundle.members[0], info)
    return 6.0 * batch * param_count(bundle.members[0], info)


def point_flops(sizes: list[int], transitions_k: int | None) -> float:
    """FLOPs of the exact Jacobian norms (and transitions along a k-point trajectory) at one point.

    Jacobian: the forward pass, the backward chain (C rows through every layer above the first)
    and the centred (C+1)×(C+1) Gram matrix against W₁W₁ᵀ (docs/performance.md). Transitions: k
    forward passes above the first layer, whose crossings are solved in closed form.
    """
    c, hidden = sizes[-1], sizes[1:-1]
    forward = 2.0 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    above_first = forward - 2.0 * sizes[0] * sizes[1]
    chain = c * above_first
    gram = 2.0 * (c + 1) * sizes[1] * min(sizes[0], sizes[1]) + 2.0 * (c + 1) ** 2 * sizes[1]
    flops = forward + chain + gram
    if transitions_k and hidden:
        flops += transitions_k * above_first
    return flops


def train_measure_flops(forward: float, scoring: ScoringSettings, tag: str, train_points: int) -> float:
    """One member's FLOPs of Jiang et al.'s train-point measures at a checkpoint (trained ones
    only), for a network of `forward` FLOPs a forward pass: each PAC-Bayes search is the base
    accuracy and `sharpness_search_depth` bisections of `sharpness_samples` perturbed copies, a
    forward pass over the `train_points` each (often most of a checkpoint's scoring); each margin
    measure one forward pass over them."""
    if tag in UNTRAINED_TAGS:
        return 0.0
    searches = sum(m in scoring.metrics for m in SHARPNESS_METRICS)
    margins = sum(m in scoring.metrics for m in MARGIN_METRICS)
    passes = searches * (1 + scoring.sharpness_search_depth * scoring.sharpness_samples) + margins
    return passes * train_points * forward


def scored_points(bundle: BundleConfig, scoring: ScoringSettings) -> tuple[int, int]:
    """(test, train) points a checkpoint is scored at: the settings' numbers, a split smaller
    than its number whole (`sweep.scoring.inputs.fixed_points`)."""
    info = dataset_info(bundle.dataset)
    return min(scoring.points, info.test_size), min(scoring.train_points, info.train_size)


def checkpoint_flops(bundle: BundleConfig, scoring: ScoringSettings, tag: str) -> float | None:
    """FLOPs of scoring one checkpoint of a fully-connected `bundle` (every member) at the spec's
    settings (convolutional ones: `conv_checkpoint_flops`)."""
    sizes = _sizes(bundle)
    if sizes is None:
        return None
    k = scoring.transitions_k if "transitions" in scoring.metrics else None
    test, train = scored_points(bundle, scoring)
    per_member = (test + train) * point_flops(sizes, k)
    per_member += train_measure_flops(2.0 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])), scoring, tag, train)
    if tag in PROFILE_TAGS:
        if scoring.trajectories:
            per_member += 3 * scoring.ellipses_per_kind * scoring.profile_points * point_flops(sizes, None)
        if scoring.slices:
            per_member += scoring.slice_count * scoring.slice_grid**2 * 2.0 * sum(
                a * b for a, b in zip(sizes[1:-1], sizes[2:-1]))
    return len(bundle.members) * per_member


def conv_point_flops(forward: float, classes: int) -> float:
    """FLOPs of a convolutional network's exact Jacobian norms at one point, for a network of
    `forward` FLOPs a forward pass: C vector-Jacobian products, a forward and a backward pass
    each (three forwards' cost)."""
    return 3.0 * classes * forward


def conv_checkpoint_flops(bundle: BundleConfig, scoring: ScoringSettings, tag: str) -> tuple[float, float] | None:
    """(Jacobian FLOPs, code FLOPs) of scoring one checkpoint of a convolutional `bundle` (every
    member): `conv_point_flops` per point and profile point and `train_measure_flops` (counted
    with the Jacobians: convolutions without codes); k forward passes along each point's
    trajectory, one per profile point and one per slice pixel, whose activation codes are compared."""
    info = dataset_info(bundle.dataset)
    if info.image_shape is None:
        return None
    forward = forward_flops(bundle.members[0], info)
    k = scoring.transitions_k if "transitions" in scoring.metrics else 0
    test, train = scored_points(bundle, scoring)
    jacobian, codes = (test + train) * conv_point_flops(forward, info.num_classes), (test + train) * k * forward
    jacobian += train_measure_flops(forward, scoring, tag, train)  # forward passes without codes
    if tag in PROFILE_TAGS:
        if scoring.trajectories:
            profile = 3 * scoring.ellipses_per_kind * scoring.profile_points
            jacobian += profile * conv_point_flops(forward, info.num_classes)
            codes += profile * forward
        if scoring.slices:
            codes += scoring.slice_count * scoring.slice_grid**2 * forward
    return len(bundle.members) * jacobian, len(bundle.members) * codes


def checkpoint_seconds(bundle: BundleConfig, scoring: ScoringSettings, tag: str,
                       cal: Calibration) -> tuple[float, str] | None:
    """Seconds to score one checkpoint of `bundle` on `cal`'s device, and a note when a rate it
    needs is not measured there (None when the data's size is unknown before loading)."""
    if bundle.architecture != "cnn":
        flops = checkpoint_flops(bundle, scoring, tag)
        return None if flops is None else (flops / cal.scoring_flops_per_s, "")
    flops = conv_checkpoint_flops(bundle, scoring, tag)
    if flops is None:
        return None
    jacobian, codes = flops
    if cal.conv_scoring_flops_per_s is None or cal.conv_codes_flops_per_s is None:
        return ((jacobian + codes) / cal.scoring_flops_per_s,
                f"convolutional scoring not calibrated on {cal.name}: fully-connected rate used")
    return jacobian / cal.conv_scoring_flops_per_s + codes / cal.conv_codes_flops_per_s, ""


# ---- how long networks train ---------------------------------------------------------------


def expected_epochs(net: NetworkConfig, budget: Budget) -> tuple[float, str]:
    """Epochs a network is expected to train, and where that number comes from: `measured`,
    `other widths` (an entry that names no width, measured at widths it lists in
    `measured_widths` that are not this network's: an extrapolation), `not converging` or
    `budget`.

    The convergence table's entries are measured epochs to 100% train accuracy (a mean) of
    networks of one architecture on one data set (name and training-set size), label noise,
    augmentation (on or off, its largest shift and flips) and batching (mini-batches or full
    batch); an entry may also name a width, depth, activation, optimizer or learning rate, and then
    holds only for those. The most specific matching entry counts, within the budget: one that
    names the width beats any that does not, then the depth, the activation, the optimizer and the
    learning rate, in that order (width decides most whether a network can fit its data). An entry
    whose epochs are null was measured not to reach 100% in its budget: its networks are counted
    at theirs (`not converging`); networks no entry matches, at theirs too (`budget`).
    """
    limit = _budget_epochs(net, budget)
    if budget.stop_at_full_train_acc:
        entry = _convergence_entry(net)
        if entry is not None:
            if entry["epochs"] is None:
                return limit, "not converging"
            elsewhere = "width" not in entry and net.width not in entry.get("measured_widths", [net.width])
            return min(limit, entry["epochs"]), "other widths" if elsewhere else "measured"
    return limit, "budget"


# Fields an entry may add to narrow it to part of a grid (absent, it holds for any value), in the
# order that ranks entries.
_NARROWING = ("width", "depth", "activation", "optimizer", "learning_rate")


def _convergence_entry(net: NetworkConfig) -> dict | None:
    key = _convergence_key(net)
    matches = [entry for entry in _table()["convergence"]
               if all(entry.get(name, default) == value for name, (value, default) in key.items())
               and all(entry[name] == getattr(net, name) for name in _NARROWING if name in entry)]
    return max(matches, key=lambda entry: tuple(name in entry for name in _NARROWING), default=None)


def _convergence_key(net: NetworkConfig) -> dict[str, tuple]:
    """What every convergence-table entry must match: its field's value for this network, and the
    field's meaning where an entry leaves it out."""
    info = dataset_info(net.dataset)
    shift, flips = augmentation_of(net, info.image_shape, info.hflip)
    return {"dataset": (net.dataset.name, None), "train_size": (net.dataset.train_size, None),
            "architecture": (net.architecture, "fc"), "random_label_fraction": (net.random_label_fraction, 0.0),
            "augmentation": (net.augmentation, False), "augmentation_shift": (shift, 0),
            "augmentation_flips": (flips, False), "full_batch": (net.batch_size is None, False)}


def _budget_epochs(net: NetworkConfig, budget: Budget) -> float:
    epochs = float(budget.max_epochs)
    n = train_size(net)
    if budget.max_steps is not None and n:
        epochs = min(epochs, budget.max_steps / steps_per_epoch(net))
    return epochs


def steps_per_epoch(net: NetworkConfig) -> int:
    n = train_size(net) or 0
    return math.ceil(n / min(net.batch_size or n, n)) if n else 0


# ---- a sweep's projection -----------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """Device-seconds of a sweep on one calibrated device (a card, or one CPU per trial)."""

    device: Calibration
    training_s: float  # expected: measured convergence where known, else the budget
    training_budget_s: float  # every network runs its full budget (the upper bound)
    scoring_s: float
    unknown_bundles: int  # image folders: sizes unknown before loading
    notes: tuple[str, ...]

    @property
    def total_s(self) -> float:
        return self.training_s + self.scoring_s

    @property
    def total_budget_s(self) -> float:
        return self.training_budget_s + self.scoring_s


def project(bundles: list[BundleConfig], budget: Budget, scoring: ScoringSettings, device: Calibration,
            trials_per_device: dict[str, int], checkpoint_every_epochs: int | None = None) -> Projection:
    """Training and scoring seconds of `bundles` on one `device`.

    Bundles that share a card (`trials_per_device[bundle_id]` > 1) overlap their step overheads
    but not their arithmetic: a step costs the card max(M·F/rate, t(M)/k). On a CPU each trial
    has its own cores, so the seconds are CPU-seconds of one trial's thread.
    """
    training = training_budget = scoring_s = 0.0
    unknown = 0
    notes: set[str] = set()
    for bundle in bundles:
        shared = max(1, trials_per_device.get(bundle.bundle_id, 1)) if device.kind == "gpu" else 1
        seconds = bundle_seconds(bundle, budget, device, shared)
        if seconds is None:
            unknown += 1
            continue
        training += seconds[0]
        training_budget += seconds[1]
        note = training_rates(device, bundle.precision, bundle.architecture)[1]
        if note:
            notes.add(note)
        tags = ["init", "end"]
        if checkpoint_every_epochs:  # each multiple of it before the last epoch (whose checkpoint is `end`)
            tags += ["epoch"] * max(0, math.ceil(bundle_epochs(bundle, budget) / checkpoint_every_epochs - 1e-9) - 1)
        for tag in tags:
            seconds, note = checkpoint_seconds(bundle, scoring, tag, device)
            scoring_s += seconds
            if note:
                notes.add(note)
    return Projection(device, training, training_budget, scoring_s, unknown, tuple(sorted(notes)))


def bundle_epochs(bundle: BundleConfig, budget: Budget) -> float:
    """Epochs a bundle is expected to train: until its last member stops (`expected_epochs`)."""
    return max(expected_epochs(m, budget)[0] for m in bundle.members)


def bundle_seconds(bundle: BundleConfig, budget: Budget, device: Calibration,
                   shared: int = 1) -> tuple[float, float] | None:
    """(expected, every member at its budget) training seconds of one bundle on `device`, with
    `shared` trials on its card (`project`); None when the data's size is unknown before loading."""
    flops = step_flops(bundle)
    if flops is None:
        return None
    rates, _ = training_rates(device, bundle.precision, bundle.architecture)
    steps = steps_per_epoch(bundle.members[0])
    member = rates.member_step_s(flops)
    # Each epoch ends with a forward pass over the training set (the stopping check).
    check = 2.0 * flops / 6.0 * (train_size(bundle) or 0) / _batch(bundle) if budget.stop_at_full_train_acc else 0.0
    out = []
    for epochs in ([expected_epochs(m, budget)[0] for m in bundle.members],
                   [_budget_epochs(m, budget) for m in bundle.members]):
        # The bundle steps until its last member stops; each member computes until it does.
        compute = sum(epochs) * (steps * member + check / rates.flops_per_s)
        fixed = steps * max(epochs) * rates.step_overhead_s
        out.append(max(compute, (compute + fixed) / shared))
    return out[0], out[1]


def progress_weights(bundles: list[BundleConfig], budget: Budget, device: Calibration) -> dict[str, tuple[float, float]]:
    """bundle_id -> (projected training seconds, expected epochs): how a sweep's progress weighs
    each bundle (`sweep.command.callbacks.ProgressCallback`). Bundles whose size is unknown before
    loading (image folders) weigh the mean of the others."""
    seconds = {b.bundle_id: bundle_seconds(b, budget, device) for b in bundles}
    known = [s[0] for s in seconds.values() if s is not None]
    default = sum(known) / len(known) if known else 1.0
    return {b.bundle_id: (seconds[b.bundle_id][0] if seconds[b.bundle_id] else default, bundle_epochs(b, budget))
            for b in bundles}


def hours(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
