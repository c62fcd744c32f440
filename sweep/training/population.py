"""The population trainer: a bundle of same-shape networks trained as one batched computation.

Each member has its own initialisation, labels (random-label fraction), data order and
augmentation draws (all from its seed; see `NetworkConfig.generator`), learning rate and
optimizer state; it stops on its own (100% train accuracy at an epoch end, the budget, or a
non-finite loss or parameter) and then leaves the batched computation.

Layout: the live members' parameters are one flat buffer holding, layer by layer, W_l as
[m, out, in] (or a convolution's [m, out, in, k, k]) and b_l as [m, out] (m = live members).
A convolutional bundle's members run as one grouped convolution per layer, members side by
side in the channel axis (`metrics_core.convnets`), as HFTA arrays them. The optimizers work on the whole buffer
at once with a per-element learning rate, so an update is a few kernels whatever the depth.
They follow torch.optim's default formulas (SGD; SGD with momentum 0.9, dampening 0; Adam with
betas (0.9, 0.999), eps 1e-8; RMSprop with alpha 0.99, eps 1e-8), so a member follows the same
trajectory as `build_network` + the torch.optim optimizer fed the same batches.

Members never interact: every op is per member (bmm, per-member mean losses summed, so each
member's gradient is its own), so a diverging member cannot disturb the others.

On CUDA a full-size step (forward, loss, backward and every member's update) is captured in a
CUDA graph and replayed: one launch instead of ~40, so the host no longer bounds small bundles.
The graph works on static buffers (the batch's indices and augmentation draws are copied in
before each replay); it is captured after `GRAPH_WARMUP` eager steps on a side stream, and again
whenever members leave (the live buffers change). A last, shorter batch of an epoch runs eagerly.
Each step is the same function either way, so the CPU tests cover its arithmetic.

Precision (`NetworkConfig.precision`) applies to the training steps only: `fp32` runs true
float32 matmuls, `tf32` allows TF32 tensor-core matmuls (CUDA; elsewhere the same as fp32),
`bf16` runs the forward and backward matmuls under bfloat16 autocast with float32 weights,
gradients and optimizer state. Stopping checks, the `networks` rows and scoring always run in
true float32.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

import metrics_core as mc
from metrics_core.convnets import images, run
from metrics_core.nets import default_chunk_size, logit_floats, logits_of
from sweep.plan.networks import BundleConfig, NetworkConfig, augmentation_of, network_row, param_count
from sweep.plan.spec import Budget
from sweep.training.checkpoints import parameters_entry, stacked_parameters
from sweep.training.data import Dataset, augment, draw_augmentation, random_labels
from sweep.training.models import initial_norm_stats, initial_parameters, population_of

MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
RMSPROP_ALPHA = 0.99
EPS = 1e-8
_SLOTS = {"sgd": (), "momentum": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"),
          "rmsprop": ("square_avg",)}
STATE_FORMAT = 1
GRAPH_WARMUP = 3  # eager steps on a side stream before a capture (cuBLAS workspaces, autograd)


def autocast(precision: str, device: torch.device):
    """bfloat16 autocast for a `bf16` step's forward pass and loss (the backward pass follows the
    forward's types). No cast cache: each weight is cast once a step anyway, and a cache must not
    outlive a step, nor be captured in a CUDA graph."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


class _BatchedLinear(torch.autograd.Function):
    """h·Wᵀ + b for every member at once (h [m, B, in], W [m, out, in], b [m, out]), whose weight
    gradient is gᵀ·h, computed in W's own layout as nn.Linear's is: autograd's `baddbmm` gives it
    as (hᵀ·g)ᵀ, a transposed view that flattening copies (ten copies of the parameter buffer a
    step on the H200's profile). Under autocast the inputs are cast as `baddbmm`'s autocast would
    cast them; autograd casts the gradients back to the inputs' types."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        device = h.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            h, weight, bias = h.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(h, weight)
        with torch.autocast(device, enabled=False):
            return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_h = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_h, torch.bmm(grad.transpose(1, 2), h), grad.sum(1)


class _StepGraph:
    """A captured training step and the static buffers it reads (CUDA only)."""

    def __init__(self, index: torch.Tensor, aug):
        self.index = index.clone()
        self.aug = None if aug is None else tuple(a.clone() for a in aug)
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None


def epoch_order(config: NetworkConfig, epoch: int, n: int) -> torch.Tensor:
    """The order in which a network visits the n training examples in `epoch` (0-based)."""
    return torch.randperm(n, generator=config.generator("order", epoch))


def member_labels(config: NetworkConfig, data: Dataset) -> torch.Tensor:
    """The training labels a network learns: true labels with its random-label fraction."""
    return random_labels(data.y_train, config.random_label_fraction, data.num_classes,
                         config.generator("labels"), config.random_labels)


def epoch_augmentation(config: NetworkConfig, epoch: int, data: Dataset):
    """(shifts [N, 2], flips [N]) for the examples in epoch order, from the ``augment`` stream."""
    shift, flips = augmentation_of(config, data.image_shape, data.hflip)
    return draw_augmentation(len(data.y_train), shift, flips, config.generator("augment", epoch))


class PopulationTrainer:
    def __init__(self, bundle: BundleConfig, data: Dataset, budget: Budget, device=None,
                 cuda_graphs: bool = True):
        self.bundle = bundle
        self.data = data
        self.budget = budget
        self.device = data.x_train.device  # "cuda" names the card the data went to: cuda:0, say
        wanted = self.device if device is None else torch.device(device)
        if self.device.type != wanted.type or wanted.index not in (None, self.device.index or 0):
            raise ValueError(f"data set is on {self.device} but the trainer on "
                             f"{wanted}; load it with load_dataset(spec, device)")
        self.members = bundle.members
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.n = len(data.y_train)
        self.batch = min(bundle.batch_size or self.n, self.n)
        self.steps_per_epoch = math.ceil(self.n / self.batch)
        self.epoch = 0
        self.steps = 0
        self.elapsed = 0.0
        count = len(self.members)
        self.status = ["running"] * count
        self.stopped_at = [(0, 0.0, 0.0)] * count  # (steps, epochs, wall time) at the stop
        self.messages = [""] * count
        self.labels = torch.stack([member_labels(c, data) for c in self.members])  # [M, N]
        # Population of all members (finished ones frozen), as parameter stacks [M, ...] layer by
        # layer (weight, bias; batch normalisation's γ, β) and batch normalisation's running
        # (mean, var) [M, C]; live rows are refreshed on demand.
        self._stacks = [t.to(self.device) for t in initial_parameters(self.members, data)]
        self._norm_stats = [(mean.to(self.device), var.to(self.device))
                            for mean, var in initial_norm_stats(self.members, data)]
        self._layout = population_of(self.members[0], data, self._stacks)  # the training view
        self._set_live(list(range(count)), None, 0)

    # ---- layout --------------------------------------------------------------------------

    def _shapes(self) -> list[tuple[int, ...]]:
        m = len(self.live)
        return [(m, *t.shape[1:]) for t in self._stacks]

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        shapes = self._shapes()
        parts = torch.split(flat, [math.prod(s) for s in shapes])
        return [p.view(s) for p, s in zip(parts, shapes)]

    def _flatten(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _set_live(self, live: list[int], slots: dict[str, torch.Tensor] | None,
                  opt_step: int) -> None:
        """Make `live` (member indices) the batched computation, taking parameters from the
        population stacks and optimizer slots from `slots` (already in live order)."""
        self.live = live
        index = torch.tensor(live, dtype=torch.int64, device=self.device)
        self._params = self._flatten([t.index_select(0, index) for t in self._stacks]).requires_grad_()
        # Running statistics [m·C], updated in place by each step's batch normalisation.
        self._live_stats = [(mean.index_select(0, index).reshape(-1), var.index_select(0, index).reshape(-1))
                            for mean, var in self._norm_stats]
        lrs = torch.tensor([self.members[i].learning_rate for i in live],
                           dtype=torch.float32, device=self.device)
        self._lr = self._flatten([lrs.view(-1, *[1] * (len(s) - 1)).expand(s)
                                  for s in self._shapes()])
        self._slots = slots if slots is not None else {
            name: torch.zeros_like(self._params, requires_grad=False)
            for name in _SLOTS[self.bundle.optimizer]}
        self._opt_step = opt_step
        # Adam's step count on the device, in float64 as torch.optim computes its corrections, so
        # a captured step advances it itself.
        self._step_count = torch.full((), float(opt_step), dtype=torch.float64, device=self.device)
        self._live_labels = self.labels.index_select(0, index)
        # Per live member, whether its losses were finite so far this epoch, and the steps before
        # its first that was not: counted on the device, with no sync.
        self._finite = torch.ones(len(live), dtype=torch.bool, device=self.device)
        self._finite_steps = torch.zeros(len(live), dtype=torch.int64, device=self.device)
        self._graph: _StepGraph | None = None  # the live buffers changed: capture again

    def _sync_population(self) -> None:
        """Copy the live members' current parameters into the population stacks."""
        if not self.live:
            return
        index = torch.tensor(self.live, dtype=torch.int64, device=self.device)
        for stack, view in zip(self._stacks, self._views(self._params.detach())):
            stack.index_copy_(0, index, view)
        for (mean, var), (live_mean, live_var) in zip(self._norm_stats, self._live_stats):
            mean.index_copy_(0, index, live_mean.view(len(self.live), -1))
            var.index_copy_(0, index, live_var.view(len(self.live), -1))

    # ---- training ------------------------------------------------------------------------

    @property
    def activation(self) -> mc.Activation:
        return self._layout.activation

    @property
    def done(self) -> bool:
        return not self.live

    def _forward(self, views: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits [m, B, C] of inputs x [m, B, d]. A linear layer is computed as nn.Linear computes
        it (x·Wᵀ + b), so a member's rounding is its lone twin's on a CPU; a convolutional network's
        members run as one grouped convolution per layer (`metrics_core.convnets.run`)."""
        if isinstance(self._layout, mc.ConvNet):
            live = self._layout.with_parameters(views)
            return run(live, images(live, x), batch_stats=self._live_stats)[0]
        h = x
        last = len(views) // 2 - 1
        for layer in range(last + 1):
            h = _BatchedLinear.apply(h, views[2 * layer], views[2 * layer + 1])
            if layer < last:
                h = self._layout.activation.forward(h)
        return h

    @torch.no_grad()
    def _update(self, grad: torch.Tensor) -> None:
        """Every live member's optimizer step on the flat buffer. Each pass over a buffer this
        size is memory-bound, so the updates use the fewest passes and temporaries that keep
        torch.optim's arithmetic (the equivalence tests hold them to it); `grad` is scratch."""
        p, lr, s = self._params, self._lr, self._slots
        kind = self.bundle.optimizer
        if kind == "sgd":
            p.addcmul_(lr, grad, value=-1)
        elif kind == "momentum":
            buf = s["momentum_buffer"]
            buf.mul_(MOMENTUM).add_(grad)
            p.addcmul_(lr, buf, value=-1)
        elif kind == "adam":
            beta1, beta2 = ADAM_BETAS
            s["exp_avg"].lerp_(grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            self._step_count += 1
            correction1 = (1 - beta1 ** self._step_count).float()
            correction2 = (1 - beta2 ** self._step_count).sqrt().float()
            denom = torch.sqrt(s["exp_avg_sq"], out=grad).div_(correction2).add_(EPS)
            p.addcdiv_(torch.div(lr, correction1).mul_(s["exp_avg"]), denom, value=-1)
        else:
            s["square_avg"].mul_(RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - RMSPROP_ALPHA)
            p.addcdiv_(grad.mul_(lr), s["square_avg"].sqrt().add_(EPS), value=-1)

    def _epoch_inputs(self):
        """Per live member: the epoch's order [m, N] and augmentation draws, on the device."""
        members = [self.members[i] for i in self.live]
        order = torch.stack([epoch_order(c, self.epoch, self.n) for c in members])
        if not self.bundle.augmentation:
            return order.to(self.device), None
        draws = [epoch_augmentation(c, self.epoch, self.data) for c in members]
        shifts = torch.stack([d[0] for d in draws]).to(self.device)
        flips = torch.stack([d[1] for d in draws]).to(self.device)
        return order.to(self.device), (shifts, flips)

    def _batch_inputs(self, idx: torch.Tensor, aug) -> torch.Tensor:
        x = self.data.x_train[idx]  # [m, B, d]
        if aug is None:
            return x
        d = self.data
        shift, _ = augmentation_of(self.members[0], d.image_shape, d.hflip)
        raw = augment(x * d.std + d.mean, d.image_shape, aug[0], aug[1], shift)
        return (raw - d.mean) / d.std

    def _step(self, idx: torch.Tensor, aug) -> None:
        """One training step of the live members on the examples `idx` [m, B] (with their
        augmentation draws `aug`); no host synchronisation, so it can be captured."""
        m = len(self.live)
        x = self._batch_inputs(idx, aug)
        y = self._live_labels.gather(1, idx)
        views = self._views(self._params)
        with mc.float32_precision(tf32=self.bundle.precision == "tf32"):
            with autocast(self.bundle.precision, self.device):
                logits = self._forward(views, x)
                losses = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), reduction="none").view(m, -1).mean(1)
            grad = self._flatten(torch.autograd.grad(losses.sum(), views))
        self._update(grad)
        self._finite &= torch.isfinite(losses.detach())
        self._finite_steps += self._finite

    def _graph_step(self, idx: torch.Tensor, aug) -> None:
        """`_step` through a CUDA graph: eager on a side stream for the first steps after the
        live set changed, then captured once and replayed."""
        graph = self._graph
        if graph is None or graph.index.shape != idx.shape:
            graph = self._graph = _StepGraph(idx, aug)
        graph.index.copy_(idx)
        for static, value in zip(graph.aug or (), aug or ()):
            static.copy_(value)
        if graph.graph is not None:
            graph.graph.replay()
            return
        if graph.warm < GRAPH_WARMUP:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(graph.index, graph.aug)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph.warm += 1
            return
        graph.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph.graph):
            self._step(graph.index, graph.aug)
        graph.graph.replay()  # capturing records the step without running it

    def train_epoch(self) -> dict:
        """One epoch for the live members, then the stopping and divergence checks."""
        if self.done:
            raise RuntimeError("every member of this bundle has stopped; check `done` first")
        started = time.perf_counter()
        order, aug = self._epoch_inputs()
        m = len(self.live)
        self._finite.fill_(True)
        self._finite_steps.zero_()
        steps_before = self.steps
        for step in range(self.steps_per_epoch):
            if self.budget.max_steps is not None and self.steps >= self.budget.max_steps:
                break
            start, stop = step * self.batch, min(self.n, (step + 1) * self.batch)
            idx = order[:, start:stop]
            batch_aug = None if aug is None else (aug[0][:, start:stop], aug[1][:, start:stop])
            if self.cuda_graphs and stop - start == self.batch:
                self._graph_step(idx, batch_aug)
            else:
                self._step(idx, batch_aug)
            self._opt_step += 1
            self.steps += 1
        self.epoch += 1
        model_steps = m * (self.steps - steps_before)
        stopped = self._end_of_epoch(steps_before)
        self.elapsed += time.perf_counter() - started
        for member, steps in stopped.items():
            self.stopped_at[member] = (steps, steps / self.steps_per_epoch, self.elapsed)
        return {"epoch": self.epoch, "live": len(self.live), **self._counts(),
                "model_steps": model_steps}

    def _counts(self) -> dict:
        return {k: self.status.count(k) for k in ("converged", "diverged", "budget")}

    @torch.no_grad()
    def _end_of_epoch(self, steps_before: int) -> dict[int, int]:
        """Mark members that diverged, converged or ran out of budget, take them out of the
        batched computation, and return the steps each had taken at its stop, by member index:
        a diverged member's end with the first step whose loss was not finite (the epoch's last
        where only its parameters are)."""
        views = self._views(self._params.detach())
        finite = self._finite.clone()
        for v in views:
            finite &= torch.isfinite(v).flatten(1).all(1)
        if self.budget.stop_at_full_train_acc:
            m = len(self.live)
            stats = [(mean.view(m, -1), var.view(m, -1)) for mean, var in self._live_stats]
            live = population_of(self.members[0], self.data, views, stats if stats else None)
            _, acc = evaluate(live, self.data.x_train, self._live_labels, min_chunk=self.batch)
            full = acc == 1.0
        else:
            full = torch.zeros_like(finite)
        out_of_budget = self.epoch >= self.budget.max_epochs or (
            self.budget.max_steps is not None and self.steps >= self.budget.max_steps)
        taken = self.steps - steps_before
        keep, stopped = [], {}
        for j, (ok, converged, finite_steps) in enumerate(zip(finite.tolist(), full.tolist(),
                                                             self._finite_steps.tolist())):
            member = self.live[j]
            steps = self.steps
            if not ok:
                self.status[member] = "diverged"
                what = ("parameters at the end of" if finite_steps == taken
                        else f"loss at step {finite_steps + 1} of")
                steps = steps_before + min(finite_steps + 1, taken)
                self.messages[member] = (
                    f"non-finite {what} epoch {self.epoch} (learning rate "
                    f"{self.members[member].learning_rate:g}); kept with the weights it had at the "
                    "epoch's end")
            elif converged:
                self.status[member] = "converged"
            elif out_of_budget:
                self.status[member] = "budget"
            else:
                keep.append(j)
                continue
            stopped[member] = steps
        if stopped:
            self._sync_population()  # freezes the stopped members' final weights
            index = torch.tensor(keep, dtype=torch.int64, device=self.device)
            slots = {k: self._views_select(v, index) for k, v in self._slots.items()}
            self._set_live([self.live[j] for j in keep], slots, self._opt_step)
        return stopped

    def _views_select(self, flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._flatten([v.index_select(0, index) for v in self._views(flat)])

    # ---- results -------------------------------------------------------------------------

    def population(self) -> mc.MLP | mc.ConvNet:
        """All members in bundle order, in inference mode; finished members frozen at their final
        weights."""
        self._sync_population()
        stats = self.norm_stats()
        return population_of(self.members[0], self.data, self.parameters(), stats if stats else None)

    def parameters(self) -> list[torch.Tensor]:
        """Every member's trained parameters [M, ...], layer by layer (copies)."""
        self._sync_population()
        return [t.clone() for t in self._stacks]

    def norm_stats(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batch normalisation's running (mean, var) [M, C] per norm layer (copies); [] without."""
        self._sync_population()
        return [(mean.clone(), var.clone()) for mean, var in self._norm_stats]

    def progress(self, member: int) -> tuple[int, float, float]:
        """(steps, epochs, wall time) a member has trained: to now, or to where it stopped (its
        weights since)."""
        if self.status[member] == "running":
            return self.steps, self.steps / self.steps_per_epoch, self.elapsed
        return self.stopped_at[member]

    def network_rows(self, sweep: str | None = None) -> list[dict]:
        """One `networks` row per member (docs/tables.md), of the sweep named `sweep`."""
        mlp = self.population()
        train_loss, train_acc = evaluate(mlp, self.data.x_train, self.labels, min_chunk=self.batch)
        labels_test = self.data.y_test.expand(len(self.members), -1)
        test_loss, test_acc = evaluate(mlp, self.data.x_test, labels_test, min_chunk=self.batch)
        params = param_count(self.members[0], self.data)
        shift, flips = augmentation_of(self.members[0], self.data.image_shape, self.data.hflip)
        resolved = {"train_size": self.n, "test_size": len(self.data.x_test), "batch_size": self.batch,
                    "augmentation_shift": shift, "augmentation_flips": flips}
        rows = []
        for i, config in enumerate(self.members):
            steps, epochs, wall = self.progress(i)
            measured = {"train": (train_loss[i].item(), train_acc[i].item()),
                        "test": (test_loss[i].item(), test_acc[i].item())}
            if self.status[i] == "diverged":  # missing, never a misleading number
                measured = {}
            rows.append(network_row(
                config, self.bundle.bundle_id, sweep=sweep, status=self.status[i], param_count=params,
                steps=steps, epochs=epochs, wall_time_s=wall, message=self.messages[i],
                resolved=resolved, **measured))
        return rows

    # ---- exact resume --------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: population weights, live set, optimizer
        state and counters. Data order, labels and augmentation are functions of (seed, epoch)
        and need no generator state. Plain tensors (CPU), lists, dicts, str, int, float."""
        parameters = self.parameters()
        return {
            "format": STATE_FORMAT,
            "network_ids": self.bundle.network_ids,
            "epoch": self.epoch,
            "steps": self.steps,
            "elapsed": self.elapsed,
            **parameters_entry([t.cpu() for t in parameters], self.bundle.architecture),
            "norm_stats": [[mean.cpu(), var.cpu()] for mean, var in self.norm_stats()],
            "live": list(self.live),
            "optimizer_step": self._opt_step,
            "optimizer_slots": {k: v.cpu() for k, v in self._slots.items()},
            "status": list(self.status),
            "stopped_at": [list(s) for s in self.stopped_at],
            "messages": list(self.messages),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"trainer state has format {state.get('format')!r}, expected "
                             f"{STATE_FORMAT}; it was written by another version of sweep")
        if state["network_ids"] != self.bundle.network_ids:
            raise ValueError("trainer state belongs to another bundle (its network ids differ "
                             f"from bundle {self.bundle.bundle_id}); resume with the bundle "
                             "config stored next to it")
        self.epoch, self.steps, self.elapsed = state["epoch"], state["steps"], state["elapsed"]
        self._stacks = [t.to(self.device) for t in stacked_parameters(state)]
        self._norm_stats = [(mean.to(self.device), var.to(self.device)) for mean, var in state.get("norm_stats", [])]
        self.status = list(state["status"])
        self.stopped_at = [tuple(s) for s in state["stopped_at"]]
        self.messages = list(state["messages"])
        slots = {k: v.to(self.device) for k, v in state["optimizer_slots"].items()}
        self._set_live(list(state["live"]), slots, state["optimizer_step"])


@mc.exact
def evaluate(net: mc.MLP | mc.ConvNet, x: torch.Tensor, labels: torch.Tensor, min_chunk: int = 1):
    """Mean cross-entropy and accuracy [M] of each member on x [N, d] with labels [M, N], in true
    float32 whatever the training precision; at least `min_chunk` points at a time (a trainer
    passes its batch size: a training step's activations, which the planner reserves, outweigh a
    forward pass over as many points, and the GPU's chunks would otherwise be a few points)."""
    m, n = net.num_models, x.shape[0]
    loss = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.int64, device=x.device)
    chunk = max(min_chunk, default_chunk_size(logit_floats(net)))
    for start in range(0, n, chunk):
        h = logits_of(net, x[start:start + chunk])  # [M, chunk, C]
        y = labels[:, start:start + chunk]
        loss += F.cross_entropy(h.flatten(0, 1), y.reshape(-1), reduction="none").view(
            m, -1).sum(1, dtype=torch.float64)
        correct += (h.argmax(-1) == y).sum(1)
    return loss / n, correct.double() / n
