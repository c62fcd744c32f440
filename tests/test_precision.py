"""TF32 stays out of everything that must be exact: the metrics, the trainer's stopping checks
and `networks` rows, and scoring, whatever the caller's settings; a `tf32` bundle's training
steps, and only they, use it. On a CPU the flags do nothing, so what is checked is the flags each
matmul and convolution runs under."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import metrics_core as mc
from sweep.plan.networks import BundleConfig, NetworkConfig
from sweep.plan.spec import Budget, DataSpec
from sweep.scoring.measure import score_checkpoint
from sweep.scoring.settings import ScoringSettings
from sweep.training.data import load_dataset
from sweep.training.population import PopulationTrainer

KERNELS = {torch.bmm, torch.baddbmm, torch.addmm, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
           F.linear, F.conv2d, F.conv_transpose2d}


class TF32AtKernels(TorchFunctionMode):
    """Whether TF32 was allowed (cuBLAS, cuDNN) at each matmul or convolution called."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[bool, bool]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in KERNELS:
            self.seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def tf32_everywhere():
    """The caller's settings: TF32 on for both (as `torch.set_float32_matmul_precision("high")`
    and cuDNN's default give); restored after."""
    with mc.float32_precision(tf32=True):
        yield


def config(architecture: str, precision: str = "fp32") -> NetworkConfig:
    fc = NetworkConfig(DataSpec("digits"), 8, 1, "relu", "sgd", 0.1, 256, 0.0, False, 0, "torch_default", precision)
    if architecture == "fc":
        return fc
    return dataclasses.replace(fc, width=4, architecture="cnn", family="vgg", stages=2, kernel_size=3, pooling="max",
                               head="flatten")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec("digits"))


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_metrics_trainer_checks_and_scoring_run_in_true_float32(digits, tf32_everywhere, architecture):
    bundle = BundleConfig((config(architecture),))
    trainer = PopulationTrainer(bundle, digits, Budget(max_epochs=1))
    with TF32AtKernels() as training:
        trainer.train_epoch()  # its steps, then its stopping check
    assert training.seen == {(False, False)}
    net, x = trainer.population(), digits.x_test[:20]
    with TF32AtKernels() as measuring:
        trainer.network_rows()
        mc.jacobian_norms(net, x, "both")
        mc.forward(net, x)
        mc.spectral_product(net)
        mc.transition_counts(net, x, partners=digits.x_test[20:60].view(20, 2, -1), k=8)
        meta = {"bundle_id": bundle.bundle_id, "bundle": bundle.to_dict(), "network_ids": bundle.network_ids,
                "tag": "end", "step": 1, "statuses": ["budget"]}
        score_checkpoint(net, meta, digits, ScoringSettings(points=8, train_points=8, transitions_k=8,
                                                            trajectories=False, slices=False))
    assert measuring.seen == {(False, False)}
    # and the caller's settings are back
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_a_tf32_bundle_trains_in_tf32_and_checks_in_true_float32(digits, architecture):
    trainer = PopulationTrainer(BundleConfig((config(architecture, "tf32"),)), digits,
                                Budget(max_epochs=1, stop_at_full_train_acc=False))
    with TF32AtKernels() as training:
        trainer.train_epoch()
    assert training.seen == {(True, True)}
    with TF32AtKernels() as rows:
        trainer.network_rows()
    assert rows.seen == {(False, False)}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)  # torch's defaults


@pytest.fixture
def tf32_settings():
    """Torch's TF32 settings, legacy and newer, as they were before the test."""
    backends = torch.backends
    newer = [(flags, flags.fp32_precision) for flags in (backends.cuda.matmul, backends.cudnn.conv, backends.cudnn.rnn)]
    matmul, cudnn = torch.get_float32_matmul_precision(), backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    backends.cudnn.allow_tf32 = cudnn
    for flags, value in newer:
        flags.fp32_precision = value


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9: no newer flags")
def test_the_callers_settings_come_back_legacy_or_newer(tf32_settings):
    backends, x = torch.backends, torch.randn(5, 4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))

    def newer():
        return backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision

    # Torch's defaults: matmuls unset ("none"), cuDNN in TF32.
    before = newer()
    with TF32AtKernels() as seen:
        mc.forward(net, x)
    assert seen.seen == {(False, False)} and newer() == before
    # A legacy precision other than on or off.
    torch.set_float32_matmul_precision("medium")
    mc.forward(net, x)
    assert torch.get_float32_matmul_precision() == "medium"
    # Only the newer flags (torch then refuses to read the legacy ones): no error, and they come back.
    torch.set_float32_matmul_precision("highest")
    backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision = "tf32", "ieee"
    with pytest.raises(RuntimeError, match="mix of the legacy and new"):
        torch.get_float32_matmul_precision()
    with TF32AtKernels() as seen:
        mc.forward(net, x)
    assert seen.seen == {(False, False)} and newer() == ("tf32", "ieee", before[2])
