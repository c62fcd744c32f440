"""Population trainer: members against networks trained alone with torch.optim, exact resume,
divergence isolation and independent stopping. Data: scikit-learn's digits (offline)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import metrics_core as mc
from sweep.plan.datasets import DATASETS
from sweep.plan.networks import BundleConfig, NetworkConfig
from sweep.plan.spec import Budget, DataSpec
from sweep.scoring.table_writer import SCHEMAS
from sweep.plan.networks import augmentation_of
from sweep.training.data import Dataset, augment, load_dataset
from sweep.training.models import build_network
from sweep.training.population import (PopulationTrainer, _BatchedLinear, epoch_augmentation, epoch_order,
                                       member_labels)

DIGITS = DataSpec("digits")
TORCH_OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
}
LEARNING_RATES = {"sgd": (0.05, 0.1, 0.02), "momentum": (0.01, 0.03, 0.005),
                  "adam": (0.001, 0.003, 0.0005), "rmsprop": (0.001, 0.0003, 0.002)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Digits-sized nets are dominated by thread hand-offs; on a shared 2-core box one
    # thread is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS)


def net(optimizer="momentum", lr=0.03, seed=0, width=32, depth=2, batch=64, noise=0.0,
        aug=False, activation="relu", init="torch_default", data=DIGITS, precision="fp32", shift=None):
    return NetworkConfig(data, width, depth, activation, optimizer, lr, batch, noise, aug, seed,
                         init, precision, augmentation_shift=shift)


def train_alone(config: NetworkConfig, data, epochs: int, losses: list | None = None) -> torch.nn.Sequential:
    """The reference: nn.Sequential + torch.optim, fed the member's batches one by one, in the
    member's precision as torch's AMP recipe has it (autocast around the forward pass and loss);
    in float64 where `data` is. Each step's loss is appended to `losses` where given."""
    model = build_network(config, data).to(data.x_train.device, data.x_train.dtype)
    opt = TORCH_OPTIMIZERS[config.optimizer](model.parameters(), config.learning_rate)
    labels = member_labels(config, data)
    n = len(labels)
    batch = config.batch_size or n
    pad, _ = augmentation_of(config, data.image_shape, data.hflip)
    with mc.float32_precision(tf32=config.precision == "tf32"):
        train_epochs(model, opt, config, data, labels, epochs, batch, pad, losses)
    return model


def train_epochs(model, opt, config: NetworkConfig, data, labels, epochs: int, batch: int, pad: int,
                 losses: list | None = None) -> None:
    n = len(labels)
    for epoch in range(epochs):
        order = epoch_order(config, epoch, n)
        shifts, flips = epoch_augmentation(config, epoch, data)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            x = data.x_train[idx]
            if config.augmentation:
                raw = augment(x * data.std + data.mean, data.image_shape,
                              shifts[start:start + batch], flips[start:start + batch], pad)
                x = (raw - data.mean) / data.std
            if config.architecture == "cnn":
                x = x.view(len(x), *data.image_shape)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss = F.cross_entropy(model(x), labels[idx])
            if losses is not None:
                losses.append(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()


def member_params(trainer: PopulationTrainer, member: int) -> list[torch.Tensor]:
    return [t[member] for t in trainer.parameters()]


def deviation(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest difference of any entry, relative to its tensor's largest entry (or 1)."""
    return max((a - e).abs().max().item() / max(e.abs().max().item(), 1.0) for a, e in zip(actual, expected))


def assert_close_params(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float):
    assert deviation(actual, expected) <= tol


# How far a member may end from the network trained alone (relative to each tensor's largest
# entry, after a few epochs on digits). On CPUs both sides compute the same sums, but the
# population's batched matmuls may add them in another order than nn.Linear's: that moves a
# well-conditioned network by under 2e-5, in every precision (tf32 is float32 there, and bf16
# autocast rounds the same products).
CPU_TOLERANCE = 2e-5


def float64(data: Dataset) -> Dataset:
    return dataclasses.replace(data, **{key: getattr(data, key).double()
                                        for key in ("x_train", "x_test", "mean", "std")})


def assert_member_follows_alone(trainer: PopulationTrainer, member: int, data: Dataset,
                                epochs: int) -> torch.nn.Sequential:
    """The member against its network trained alone: within CPU_TOLERANCE, or, where float32
    rounding alone moves that network further (from the same training in float64), within twice
    that. Adam and RMSprop divide by running gradient magnitudes, so a gradient that nearly cancels
    in a step's first updates turns rounding in its sum into a visible share of the learning
    rate: one Adam network here ends 9e-3 from its float64 twin after 3 epochs on an AVX-512 CPU,
    and its member as far. Returns the network trained alone."""
    config = trainer.members[member]
    alone = train_alone(config, data, epochs)
    found = deviation(member_params(trainer, member), list(alone.parameters()))
    if found <= CPU_TOLERANCE:
        return alone
    exact = dataclasses.replace(config, precision="fp32")
    in_float32 = alone if config.precision == "fp32" else train_alone(exact, data, epochs)
    rounding = deviation(list(in_float32.parameters()),
                         [p.float() for p in train_alone(exact, float64(data), epochs).parameters()])
    assert found <= 2 * rounding, (config, found, rounding)
    return alone


@pytest.mark.parametrize("optimizer", sorted(TORCH_OPTIMIZERS))
def test_member_follows_the_network_trained_alone(digits, optimizer):
    lrs = LEARNING_RATES[optimizer]
    members = (net(optimizer, lrs[0], seed=1, noise=0.2), net(optimizer, lrs[1], seed=2),
               net(optimizer, lrs[2], seed=3, noise=0.5))
    trainer = PopulationTrainer(BundleConfig(members), digits,
                                Budget(max_epochs=3, stop_at_full_train_acc=False))
    while not trainer.done:
        trainer.train_epoch()
    assert trainer.steps == 3 * math.ceil(1297 / 64)
    for i in range(len(members)):
        assert_member_follows_alone(trainer, i, digits, epochs=3)


def trained_in(precision: str, optimizer: str, data) -> PopulationTrainer:
    """A two-member bundle trained 3 epochs in `precision`; its rows say so."""
    lrs = LEARNING_RATES[optimizer]
    members = (net(optimizer, lrs[0], seed=1, precision=precision),
               net(optimizer, lrs[1], seed=2, noise=0.2, precision=precision))
    trainer = PopulationTrainer(BundleConfig(members), data, Budget(max_epochs=3, stop_at_full_train_acc=False))
    while not trainer.done:
        trainer.train_epoch()
    assert [row["precision"] for row in trainer.network_rows()] == [precision] * 2
    return trainer


def member_deviations(data, optimizer: str, precision: str) -> list[tuple[float, float]]:
    """Per member of `trained_in(precision)`: (its deviation from the same network trained alone
    in `precision`, that lone network's deviation from the lone network trained in fp32, i.e.
    what the precision's rounding alone moves it)."""
    trainer = trained_in(precision, optimizer, data)
    out = []
    for i, config in enumerate(trainer.members):
        alone = list(train_alone(config, data, epochs=3).parameters())
        exact = list(train_alone(dataclasses.replace(config, precision="fp32"), data, epochs=3).parameters())
        out.append((deviation(member_params(trainer, i), alone), deviation(alone, exact)))
    return out


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("optimizer", sorted(TORCH_OPTIMIZERS))
def test_member_follows_the_network_trained_alone_in_every_precision(digits, optimizer, precision):
    trainer = trained_in(precision, optimizer, digits)
    for i in range(len(trainer.members)):
        assert_member_follows_alone(trainer, i, digits, epochs=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", sorted(TORCH_OPTIMIZERS))
def test_cuda_graph_steps_equal_eager_steps_as_members_leave(optimizer):
    # Captured and replayed steps against the same steps run eagerly: augmentation (its draws
    # copied into the graph's buffers), a last short batch (eager), members that converge,
    # diverge or run out of budget at different epochs (each change of the live set re-captures).
    data = load_dataset(DIGITS, device="cuda")
    lrs = LEARNING_RATES[optimizer]
    members = BundleConfig((net(optimizer, lrs[1] * 3, seed=1, aug=True), net(optimizer, lrs[0], seed=2, aug=True),
                            net(optimizer, 1e4, seed=3, aug=True), net(optimizer, lrs[2], seed=4, noise=0.5, aug=True)))
    budget = Budget(max_epochs=8)
    eager = run(PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=False))
    graphed = run(PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=True))
    assert graphed.cuda_graphs and graphed.status == eager.status
    assert [s[:2] for s in graphed.stopped_at] == [s[:2] for s in eager.stopped_at]  # steps, epochs
    for i in range(len(members.members)):
        if eager.status[i] != "diverged":
            assert_close_params(member_params(graphed, i), member_params(eager, i), 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_member_follows_the_network_trained_alone_in_every_precision(precision):
    # On a card the population's batched matmuls and the lone network's accumulate in different
    # orders, and TF32/bf16 rounding amplifies that over 3 epochs: in those precisions a member
    # may be as far from its lone twin as twice what the precision's rounding moves the lone
    # network from fp32 (in fp32, 1e-4). The deviations are printed for the record.
    data = load_dataset(DIGITS, device="cuda")
    found = {opt: member_deviations(data, opt, precision) for opt in sorted(TORCH_OPTIMIZERS)}
    print(f"{precision}: (member vs alone, alone vs fp32) {found}")
    for optimizer, pairs in found.items():
        for member, rounding in pairs:
            bound = 1e-4 if precision == "fp32" else max(1e-4, 2 * rounding)
            assert member <= bound, (optimizer, precision, found)


@pytest.mark.parametrize("variant", ["full_batch", "augmentation", "augmentation_shift", "tanh_he_normal"])
def test_member_follows_the_network_trained_alone_variants(digits, variant):
    kwargs = {"full_batch": dict(optimizer="sgd", lr=0.5, batch=None),
              "augmentation": dict(aug=True),
              "augmentation_shift": dict(aug=True, shift=3),
              "tanh_he_normal": dict(activation="tanh", init="he_normal", depth=3)}[variant]
    members = (net(seed=4, **kwargs), net(seed=5, **kwargs))
    epochs = 20 if variant == "full_batch" else 2
    trainer = PopulationTrainer(BundleConfig(members), digits,
                                Budget(max_epochs=epochs, stop_at_full_train_acc=False))
    while not trainer.done:
        trainer.train_epoch()
    for i in range(len(members)):
        assert_member_follows_alone(trainer, i, digits, epochs)
    if variant.startswith("augmentation"):  # the rows say what augmentation the members had
        expected = (3 if variant == "augmentation_shift" else 1, False)  # digits: never flipped
        assert {(r["augmentation_shift"], r["augmentation_flips"]) for r in trainer.network_rows()} == {expected}
    # The initial parameters alone differ from the trained ones (training did happen).
    init = build_network(members[0], digits)
    assert not torch.allclose(member_params(trainer, 0)[0], next(init.parameters()))


def test_augmentation_draws_follow_the_networks_shift_and_flips():
    # Natural 3×32×32 images (flips allowed): the usual 4-pixel shift and flips, a given shift, none.
    g = torch.Generator().manual_seed(0)
    n, d = 512, 3 * 32 * 32
    x, y = torch.randn(n, d, generator=g), torch.randint(0, 10, (n,), generator=g)
    cifar = Dataset("cifar10", x, y, x[:8], y[:8], 10, (3, 32, 32), torch.zeros(d), torch.ones(d), True)
    spec = DataSpec("cifar10")

    def draws(**kwargs):
        config = NetworkConfig(spec, 8, 1, "relu", "sgd", 0.1, 64, 0.0, True, 0, "torch_default", **kwargs)
        return epoch_augmentation(config, 0, cifar)

    shifts, flips = draws()
    assert set(shifts.unique().tolist()) == set(range(9)) and 0.4 < flips.float().mean() < 0.6
    shifts, flips = draws(augmentation_shift=1, augmentation_flips=False)
    assert set(shifts.unique().tolist()) == {0, 1, 2} and not flips.any()
    shifts, flips = draws(augmentation_shift=0)
    assert not shifts.any() and flips.any()
    # Flipping with no shift is a mirror image, pixel for pixel.
    image = x[:1]
    mirrored = augment(image, (3, 32, 32), torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, dtype=torch.bool), 0)
    torch.testing.assert_close(mirrored.view(3, 32, 32), image.view(3, 32, 32).flip(-1), rtol=0, atol=0)


def run(trainer: PopulationTrainer) -> PopulationTrainer:
    while not trainer.done:
        trainer.train_epoch()
    return trainer


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_resume_is_exact(digits, tmp_path, optimizer):
    lr = 0.1 if optimizer == "momentum" else 0.01
    members = BundleConfig((net(optimizer, lr, seed=0, width=64),
                            net(optimizer, lr / 3, seed=1, width=64),
                            net(optimizer, lr, seed=2, noise=0.3, width=64),
                            net(optimizer, 1e30, seed=3, width=64)))  # diverges
    budget = Budget(max_epochs=14)
    straight = run(PopulationTrainer(members, digits, budget))

    first = PopulationTrainer(members, digits, budget)
    for _ in range(5):
        first.train_epoch()
    assert 0 < len(first.live) < 4  # some members already stopped: compaction is resumed too
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = PopulationTrainer(members, digits, budget)
    resumed.load_state_dict(state)
    run(resumed)

    assert resumed.status == straight.status
    assert resumed.steps == straight.steps and resumed.epoch == straight.epoch
    for a, b in zip(resumed.population().weights + resumed.population().biases,
                    straight.population().weights + straight.population().biases):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    keys = ("status", "steps", "epochs", "train_loss", "test_acc")
    assert ([[r[k] for k in keys] for r in resumed.network_rows()]
            == [[r[k] for k in keys] for r in straight.network_rows()])


def test_state_of_another_bundle_is_refused(digits):
    a = PopulationTrainer(BundleConfig((net(seed=0),)), digits, Budget(max_epochs=1))
    b = PopulationTrainer(BundleConfig((net(seed=1),)), digits, Budget(max_epochs=1))
    with pytest.raises(ValueError, match="another bundle"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("lr", [1e6, 10.0])
def test_diverged_member_does_not_disturb_the_others(digits, lr):
    good = (net("sgd", 0.2, seed=0), net("sgd", 0.1, seed=1, noise=0.2))
    bad = net("sgd", lr, seed=2)
    budget = Budget(max_epochs=4, stop_at_full_train_acc=False)
    with_bad = run(PopulationTrainer(BundleConfig((good[0], bad, good[1])), digits, budget))
    without = run(PopulationTrainer(BundleConfig(good), digits, budget))

    assert with_bad.status == ["budget", "diverged", "budget"]
    assert_close_params(member_params(with_bad, 0), member_params(without, 0), 1e-6)
    assert_close_params(member_params(with_bad, 2), member_params(without, 1), 1e-6)
    rows = with_bad.network_rows()
    assert len(rows) == 3  # recorded, never dropped
    assert rows[1]["status"] == "diverged" and "non-finite" in rows[1]["message"]
    # Its steps end with its first non-finite loss, as the same network's alone (mid-epoch here).
    losses = []
    train_alone(bad, digits, 1, losses)
    first = next(i for i, loss in enumerate(losses) if not torch.isfinite(loss)) + 1
    assert 1 < first < with_bad.steps_per_epoch
    assert rows[1]["steps"] == first and rows[1]["epochs"] == first / with_bad.steps_per_epoch
    assert f"non-finite loss at step {first} of epoch 1" in rows[1]["message"]
    assert all(math.isnan(rows[1][k]) for k in ("train_loss", "test_acc", "gap"))
    assert rows[0]["message"] == "" and rows[0]["train_acc"] > 0.5


def test_members_stop_on_their_own(digits):
    fast, slow = net("momentum", 0.1, seed=0, width=64), net("momentum", 0.002, seed=1, width=64)
    trainer = PopulationTrainer(BundleConfig((fast, slow)), digits, Budget(max_epochs=12))
    reports = []
    while not trainer.done:
        reports.append(trainer.train_epoch())
    assert trainer.status == ["converged", "budget"]
    stop = next(r["epoch"] for r in reports if r["converged"] == 1)
    assert stop < 12
    assert [r["live"] for r in reports] == [2] * (stop - 1) + [1] * (12 - stop) + [0]
    assert all(r["model_steps"] == (2 if r["epoch"] <= stop else 1) * 21 for r in reports)

    # The converged member stayed frozen: it equals the same network trained alone for
    # exactly `stop` epochs, and its row shows 100% train accuracy at that point.
    alone = train_alone(fast, digits, epochs=stop)  # bmm vs mm rounding grows with lr·steps
    assert_close_params(member_params(trainer, 0), list(alone.parameters()), 1e-4)
    longer = train_alone(fast, digits, epochs=stop + 1)
    assert not torch.allclose(member_params(trainer, 0)[0], next(longer.parameters()), atol=1e-3)
    rows = trainer.network_rows()
    assert rows[0]["train_acc"] == 1.0 and rows[0]["epochs"] == stop
    assert rows[0]["steps"] == stop * 21 and rows[1]["steps"] == 12 * 21
    assert rows[1]["train_acc"] < 1.0 and rows[1]["status"] == "budget"
    assert rows[0]["wall_time_s"] <= rows[1]["wall_time_s"]


def test_max_steps_stops_mid_epoch(digits):
    trainer = run(PopulationTrainer(BundleConfig((net(seed=0),)), digits,
                                    Budget(max_epochs=10, max_steps=30,
                                           stop_at_full_train_acc=False)))
    row = trainer.network_rows()[0]
    assert (row["status"], row["steps"]) == ("budget", 30)
    assert row["epochs"] == pytest.approx(30 / 21)


def test_rows_match_the_networks_table(digits):
    config = net(batch=None, noise=0.25)
    trainer = PopulationTrainer(BundleConfig((config,)), digits, Budget(max_epochs=1))
    trainer.train_epoch()
    row = trainer.network_rows("a-sweep")[0]
    assert sorted(row) == sorted(SCHEMAS["networks"].names) and row["sweep"] == "a-sweep"
    assert row["batch_size"] == row["train_size"] == 1297 and row["full_batch"] is True
    assert row["param_count"] == sum(p.numel() for p in build_network(config, DATASETS["digits"]).parameters())
    # Train metrics use the member's own (noisy) labels: recompute them independently.
    model = build_network(config, DATASETS["digits"])
    pop = trainer.population()
    with torch.no_grad():
        for layer, linear in enumerate(model[0::2]):
            linear.weight.copy_(pop.weights[layer][0])
            linear.bias.copy_(pop.biases[layer][0])
        logits = model(digits.x_train)
    labels = member_labels(config, digits)
    assert row["train_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert row["train_acc"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())
    assert row["gap"] == pytest.approx(row["train_acc"] - row["test_acc"])


def test_batched_linear_has_autograd_s_gradients_in_the_weight_s_layout():
    # gradcheck: against finite differences in float64, for every input.
    h, w, b = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 5, 4), (3, 2, 4), (3, 2)))
    assert torch.autograd.gradcheck(_BatchedLinear.apply, (h, w, b))
    out = _BatchedLinear.apply(h, w, b)
    torch.testing.assert_close(out, torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)), rtol=0, atol=0)
    # The point of it: a weight gradient flattens without a copy (baddbmm's is a transposed view).
    grad_w, grad_b = torch.autograd.grad(out.square().sum(), (w, b))
    assert grad_w.is_contiguous() and grad_b.is_contiguous()
    # Under bfloat16 autocast it computes and rounds as autocast's baddbmm does.
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        ours = _BatchedLinear.apply(h.float(), w.float(), b.float())
        theirs = torch.baddbmm(b.float().unsqueeze(1), h.float(), w.float().transpose(1, 2))
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_trainer_uses_the_data_set_in_place(digits):
    trainer = PopulationTrainer(BundleConfig((net(),)), digits, Budget(max_epochs=1))
    assert trainer.data is load_dataset(DIGITS)  # one copy per process, not per trainer
    with pytest.raises(ValueError, match="load_dataset"):
        PopulationTrainer(BundleConfig((net(),)), digits, Budget(max_epochs=1), device="meta")
    # A device named with or without its index is the data set's device.
    assert PopulationTrainer(BundleConfig((net(),)), digits, Budget(max_epochs=1), device="cpu:0").device == digits.x_train.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trainer_on_cuda_follows_the_cpu(digits):
    # As a GPU trial builds it: the device named "cuda", the data set loaded onto it.
    members = BundleConfig((net("momentum", 0.03, seed=1), net("momentum", 0.01, seed=2, noise=0.2)))
    budget = Budget(max_epochs=2, stop_at_full_train_acc=False)
    gpu = run(PopulationTrainer(members, load_dataset(DIGITS, device="cuda"), budget, device="cuda"))
    cpu = run(PopulationTrainer(members, digits, budget))
    assert gpu.device.type == "cuda"
    for i in range(len(members.members)):
        assert_close_params([p.cpu() for p in member_params(gpu, i)], member_params(cpu, i), 1e-4)


def conv_net(family: str, optimizer: str, lr: float, seed: int, *, noise: float = 0.0, aug: bool = False,
             pooling: str = "max", head: str = "flatten", norm: bool = False) -> NetworkConfig:
    return dataclasses.replace(net(optimizer, lr, seed=seed, width=4, depth=1, batch=128, noise=noise, aug=aug),
                               architecture="cnn", family=family, stages=2, kernel_size=3, pooling=pooling, head=head,
                               batch_norm=norm)


@pytest.mark.parametrize("family,optimizer,pooling,head,aug,norm", [
    ("vgg", "sgd", "max", "flatten", False, False), ("vgg", "momentum", "avg", "gap", True, True),
    ("nin", "adam", "conv", "gap", False, True), ("nin", "rmsprop", "max", "flatten", True, False)])
def test_a_convolutional_member_follows_the_network_trained_alone(digits, family, optimizer, pooling, head, aug,
                                                                  norm):
    lrs = LEARNING_RATES[optimizer]
    members = (conv_net(family, optimizer, lrs[1], 1, noise=0.2, aug=aug, pooling=pooling, head=head, norm=norm),
               conv_net(family, optimizer, lrs[0], 2, aug=aug, pooling=pooling, head=head, norm=norm))
    trainer = PopulationTrainer(BundleConfig(members), digits, Budget(max_epochs=2, stop_at_full_train_acc=False))
    while not trainer.done:
        trainer.train_epoch()
    for i in range(len(members)):
        alone = assert_member_follows_alone(trainer, i, digits, epochs=2)
        # batch normalisation's running statistics too, and its inference mode in the metrics
        buffers = [b for name, b in alone.named_buffers() if name.endswith(("running_mean", "running_var"))]
        # (mean, var) × 2 stages × (the block's norms + the strided pooling convolution's)
        assert len(buffers) == 2 * 2 * ((2 if family == "nin" else 1) + (pooling == "conv")) * norm
        if norm:
            assert_close_params([t[i] for pair in trainer.norm_stats() for t in pair], buffers, 2e-5)
        x = digits.x_test[:50]
        with torch.no_grad():
            expected = alone.eval()(x.view(-1, *digits.image_shape))
        got = mc.forward(trainer.population(), x)[i]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    rows = trainer.network_rows()
    assert [r["architecture"] for r in rows] == ["cnn", "cnn"]
    assert rows[0]["param_count"] == sum(p.numel() for p in alone.parameters())


def test_a_convolutional_bundle_with_batch_norm_resumes_exactly(digits, tmp_path):
    members = BundleConfig((conv_net("vgg", "momentum", 0.05, 0, norm=True),
                            conv_net("vgg", "momentum", 0.02, 1, noise=0.3, norm=True),
                            conv_net("vgg", "momentum", 1e30, 2, norm=True)))  # diverges
    budget = Budget(max_epochs=6)
    straight = run(PopulationTrainer(members, digits, budget))
    first = PopulationTrainer(members, digits, budget)
    for _ in range(3):
        first.train_epoch()
    assert 0 < len(first.live) < 3
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = PopulationTrainer(members, digits, budget)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    run(resumed)
    assert resumed.status == straight.status and resumed.steps == straight.steps
    for a, b in zip([*resumed.parameters(), *(t for pair in resumed.norm_stats() for t in pair)],
                    [*straight.parameters(), *(t for pair in straight.norm_stats() for t in pair)]):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_cuda_resume_with_graphs_is_exact(architecture):
    # A resumed trainer warms up eagerly before it captures its graph again, and cuDNN picks its
    # algorithms anew: the weights must still be the very ones of the run that never stopped.
    data = load_dataset(DIGITS, device="cuda")
    if architecture == "fc":
        members = BundleConfig((net("momentum", 0.03, seed=1), net("momentum", 0.01, seed=2, noise=0.2)))
    else:
        members = BundleConfig((conv_net("vgg", "momentum", 0.05, 0, norm=True),
                                conv_net("vgg", "momentum", 0.02, 1, noise=0.3, norm=True)))
    budget = Budget(max_epochs=6, stop_at_full_train_acc=False)
    straight = run(PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=True))
    first = PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=True)
    for _ in range(3):
        first.train_epoch()
    resumed = PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=True)
    resumed.load_state_dict(first.state_dict())
    run(resumed)
    for a, b in zip([*resumed.parameters(), *(t for pair in resumed.norm_stats() for t in pair)],
                    [*straight.parameters(), *(t for pair in straight.norm_stats() for t in pair)]):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_of_a_convolutional_bundle_equal_eager_steps():
    # Grouped convolutions, batch normalisation's running statistics updated inside the graph,
    # augmentation draws copied in, and re-captures as members leave.
    data = load_dataset(DIGITS, device="cuda")
    members = BundleConfig((conv_net("nin", "momentum", 0.05, 1, aug=True, norm=True),
                            conv_net("nin", "momentum", 0.02, 2, aug=True, norm=True),
                            conv_net("nin", "momentum", 1e4, 3, aug=True, norm=True)))
    budget = Budget(max_epochs=6)
    eager = run(PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=False))
    graphed = run(PopulationTrainer(members, data, budget, device="cuda", cuda_graphs=True))
    assert graphed.status == eager.status
    for i in range(3):
        if eager.status[i] != "diverged":
            assert_close_params(member_params(graphed, i), member_params(eager, i), 1e-5)
