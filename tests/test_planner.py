"""The planner (bundles sized to the card, GPU shares that Ray packs without overfilling a card)
and the cost model behind `--dry-run` and `sweep presets`."""

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from live_bytes import LiveBytes

from sweep.command.cli import main
from sweep.command import runner
from sweep.plan import sweep_plan
from sweep.plan import costs, planner
from sweep.plan.datasets import DATASETS, dataset_info
from sweep.plan.networks import BundleConfig, NetworkConfig, forward_flops
from sweep.plan.planner import Card
from sweep.plan.presets import list_presets
from sweep.plan.spec import Budget, DataSpec, SpecError, load_spec, parse_spec
from sweep.training.data import load_dataset
from sweep.training.population import PopulationTrainer


def cifar_spec(widths=(2000,), depths=(5,), **resources) -> object:
    return parse_spec({
        "name": "big",
        "datasets": ["cifar10"],
        "grid": {"widths": list(widths), "depths": list(depths), "optimizers": ["momentum"],
                 "learning_rates": [0.001, 0.003, 0.01, 0.03], "seeds": [0, 1, 2, 3, 4]},
        "budget": {"max_epochs": 10},
        "resources": {"bundle_size": "auto", "gpus_per_trial": "auto", **resources},
    })


def test_a_bigger_card_takes_more_members_and_each_bundle_fits_its_card():
    spec = cifar_spec(widths=(2000,), depths=(2,))
    small, big = Card(3, "test"), Card(80, "test")
    on_small, on_big = planner.expand(spec, small), planner.expand(spec, big)
    assert max(len(b.members) for b in on_small) < max(len(b.members) for b in on_big)
    assert sum(len(b.members) for b in on_small) == sum(len(b.members) for b in on_big) == 20
    for bundles, card in ((on_small, small), (on_big, big)):
        for bundle in bundles:
            assert planner.estimate_bundle_bytes(bundle, card) <= card.usable_bytes
    # On the small card memory binds: one more member would not have fitted.
    members = max(len(b.members) for b in on_small)
    one_more = BundleConfig(planner.networks(spec)[: members + 1])
    assert planner.estimate_bundle_bytes(one_more, small) > small.usable_bytes
    # A fixed quarter of a card: Ray puts four trials on each, so auto sizes each bundle to a quarter.
    card = Card(8, "test")
    whole = max(len(b.members) for b in planner.expand(spec, card))
    quarter = cifar_spec(widths=(2000,), depths=(2,), gpus_per_trial=0.25)
    bundles = planner.expand(quarter, card)
    per_trial = max(len(b.members) for b in bundles)
    assert per_trial < whole and sum(len(b.members) for b in bundles) == 20
    assert 4 * max(planner.estimate_bundle_bytes(b, card) for b in bundles) <= card.usable_bytes
    one_more = BundleConfig(planner.networks(quarter)[: per_trial + 1])
    assert 4 * planner.estimate_bundle_bytes(one_more, card) > card.usable_bytes


def test_small_networks_fill_a_bundle_and_large_ones_split_to_keep_cards_busy():
    # 784→64×1 does little arithmetic a step: all 20 in one bundle; 3072→2000×5 does ~17 GFLOP a
    # member-step, so a few members already keep an H200 busy and the rest run as other trials.
    small = parse_spec({"name": "s", "datasets": ["mnist"],
                        "grid": {"widths": [64], "depths": [1], "learning_rates": [0.01, 0.03, 0.1, 0.3],
                                 "seeds": [0, 1, 2, 3, 4]},
                        "budget": {"max_epochs": 1}, "resources": {"bundle_size": "auto", "gpus_per_trial": "auto"}})
    card = Card(140, "test")
    assert [len(b.members) for b in planner.expand(small, card)] == [20]
    spec = cifar_spec()
    large = planner.expand(spec, card)
    limit = planner.members_per_bundle(planner.networks(spec), spec, card)
    assert 1 < len(large) == math.ceil(20 / limit) and max(len(b.members) for b in large) <= limit < 20
    rates, _ = costs.training_rates(costs.reference_gpu(), "fp32")
    member = rates.member_step_s(costs.step_flops(large[0]))
    assert limit * member >= planner.BUSY * rates.step_overhead_s > (limit - 1) * member


def test_cpu_sweeps_keep_todays_bundles():
    spec = parse_spec({"name": "c", "datasets": ["digits"],
                       "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1, 0.2], "seeds": list(range(20))},
                       "budget": {"max_epochs": 1}})
    assert spec.resources.bundle_size == "auto" and planner.card_for(spec) is None
    bundles = planner.expand(spec)
    assert [len(b.members) for b in bundles] == [14, 13, 13]  # at most CPU_BUNDLE_SIZE (16), evenly
    assert set(planner.gpu_shares(spec, bundles, None).values()) == {0.0}
    digits = load_spec("digits")
    assert [len(b.members) for b in planner.expand(digits)] == [8] * 6


def test_a_network_too_large_for_the_card_is_refused_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SpecError, match=r"one network cifar10 3072→60000×3 .* needs about .* GiB to train, "
                                        r"more than the 7.4 GiB a trial may use of the 8 GiB card"):
        planner.expand(cifar_spec(widths=(60000,), depths=(3,)), Card(8, "test"))
    with pytest.raises(SpecError, match=r"resources.bundle_size: a bundle of 20 networks .* use bundle_size: auto"):
        planner.expand(cifar_spec(bundle_size=20), Card(8, "test"))
    # A fixed share that lets Ray put more bundles on a card than its memory holds.
    with pytest.raises(SpecError, match=r"gpus_per_trial: 0.1 lets Ray place 10 trials on one card"):
        planner.expand(cifar_spec(bundle_size=2, gpus_per_trial=0.1), Card(8, "test"))
    spec = tmp_path / "huge.yaml"
    spec.write_text(json.dumps({"name": "huge", "datasets": ["cifar10"],
                                "grid": {"widths": [60000], "depths": [3], "learning_rates": [0.1]},
                                "budget": {"max_epochs": 1}, "resources": {"gpus_per_trial": "auto"}}))
    code = main(["run", str(spec), "--gpu-memory", "8", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and f"sweep: error: {spec}: grid: one network" in err and "Traceback" not in err, err


def test_the_dry_run_names_the_part_of_the_data_and_the_augmentation_each_shape_trains_with(tmp_path, capsys):
    spec = tmp_path / "part.yaml"
    spec.write_text(json.dumps({"name": "part", "datasets": [{"name": "digits", "train_size": 37, "test_size": 23}],
                                "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1],
                                         "augmentation": [False, True]},
                                "training": {"augmentation_shift": 2}, "budget": {"max_epochs": 1}}))
    assert main(["run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data: digits (37 of 1297 train, 23 of 500 test examples); " in out, out
    rows = [line.split() for line in out.splitlines() if line.startswith("digits ")]
    assert sorted(row[5] for row in rows) == ["2px", "no"], rows  # digits are never flipped
    # An image folder's sizes and shape as read from its files: 32×32 images shift by up to 4 and flip.
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(tmp_path / "images" / split / label / f"{i}.png")
    spec.write_text(json.dumps({"name": "folder", "datasets": [{"name": "image_folder", "path": str(tmp_path / "images"),
                                                                "train_size": 5}],
                                "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1], "augmentation": [True]},
                                "budget": {"max_epochs": 1}}))
    assert main(["run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"data: image_folder at {tmp_path / 'images'} (5 of 8 train examples); " in out, out
    assert [line.split()[5] for line in out.splitlines() if line.startswith("image_folder ")] == ["4px+flip"], out
    assert main(["run", "cnn-factors", "--dry-run"]) == 0  # CIFAR-10's usual shift, and flips
    assert {line.split()[-7] for line in capsys.readouterr().out.splitlines() if line.startswith("cifar10 ")} \
        == {"no", "4px+flip"}


def test_gap_and_flatten_heads_on_a_one_pixel_map_are_named_as_one_network_twice(tmp_path):
    import torch

    from sweep.training.models import build_network

    spec = tmp_path / "heads.yaml"
    spec.write_text(json.dumps({"name": "heads", "datasets": ["digits"], "architecture": "cnn",
                                "grid": {"families": ["vgg", "nin"], "widths": [4], "depths": [1], "stages": [2, 3],
                                         "heads": ["gap", "flatten"], "learning_rates": [0.1]},
                                "budget": {"max_epochs": 1}}))
    parsed = load_spec(str(spec))
    bundles = planner.expand(parsed, None)
    notes = [note for note in planner.plan_notes(parsed, bundles, None) if note.startswith("grid.heads")]
    assert notes == ["grid.heads: gap and flatten are one network where the last feature map is 1×1 pixel, as for "
                     "vgg 4c×1b×3s k3 max, nin 4c×1b×3s k3 max: 2 network(s) train twice under two ids; keep one "
                     "head for them, or use fewer stages"]
    # The claim, checked: three stages (8×8 → 1×1) give the same function from the same initial weights, two do not.
    nets = {(n.family, n.stages, n.head): n for b in bundles for n in b.members}
    x = torch.randn(5, 1, 8, 8)
    for family in ("vgg", "nin"):
        for stages, same in ((3, True), (2, False)):
            gap, flat = (build_network(nets[family, stages, head], DATASETS["digits"]) for head in ("gap", "flatten"))
            assert (nets[family, stages, "gap"].network_id != nets[family, stages, "flatten"].network_id)
            assert torch.allclose(gap(x), flat(x)) == same, (family, stages)


def test_the_card_a_preset_says_it_needs_is_enough_and_a_smaller_one_is_refused(capsys):
    # cnn-factors' description: "cards of 64 GiB or more" (a full-batch NiN needs about 55 GiB).
    assert "cards of 64 GiB or more" in load_spec("cnn-factors").description
    assert main(["run", "cnn-factors", "--dry-run", "--gpu-memory", "64"]) == 0
    capsys.readouterr()
    assert main(["run", "cnn-factors", "--dry-run", "--gpu-memory", "56"]) == 2
    assert "more than the 51.5 GiB a trial may use of the 56 GiB card" in capsys.readouterr().err


def test_a_trial_that_cannot_share_a_card_with_its_scoring_actor_is_refused(tmp_path, capsys):
    # A full-batch 3072→6000×4 bundle takes most of a 24 GiB card, and with scoring_actors: auto each
    # card's scoring actor starts first: together more than the card, so Ray would wait for ever.
    spec = tmp_path / "crowded.yaml"
    resources = {"gpus_per_trial": "auto", "gpu_memory_gib": 24, "scoring_actors": "auto",
                 "gpus_per_scoring_actor": "auto"}
    spec.write_text(json.dumps({"name": "crowded", "datasets": ["cifar10"],
                                "grid": {"widths": [6000], "depths": [4], "learning_rates": [0.01],
                                         "batch_sizes": [None]},
                                "budget": {"max_epochs": 10}, "resources": resources}))
    parsed = load_spec(str(spec))
    bundles = planner.expand(parsed, planner.card_for(parsed))
    shares = planner.gpu_shares(parsed, bundles, planner.card_for(parsed))
    scoring = planner.scoring_share(parsed, bundles, planner.card_for(parsed))
    assert max(shares.values()) + scoring > 1  # what Ray would be asked for on one card
    code = main(["run", str(spec), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "more than one card together" in err and "Traceback" not in err, err
    # its bundles hold one network each: a smaller bundle_size cannot help
    assert {len(b.members) for b in bundles} == {1} and "bundle_size" not in err and "use bigger cards" in err
    # without scoring during the run there is no actor to share the card with
    assert main(["run", str(spec), "--dry-run", "--no-score"]) == 0
    spec.write_text(spec.read_text().replace('"scoring_actors": "auto"', '"scoring_actors": 1'))
    assert main(["run", str(spec), "--dry-run"]) == 0  # one actor: the other cards are free of it


def test_a_train_split_too_small_for_same_class_ellipses_is_refused_before_anything_starts():
    def spec(train_size, trajectories=True):
        return parse_spec({"name": "s", "datasets": [{"name": "digits", "train_size": train_size}],
                           "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1]}, "budget": {"max_epochs": 1},
                           "scoring": {"points": 10, "train_points": 3, "trajectories": trajectories}})

    with pytest.raises(SpecError, match=r"digits with 20 training examples of 10 classes may have no class with three"
                                        r".* a train_size of at least 21, or scoring.trajectories: false"):
        planner.expand(spec(20))
    assert planner.expand(spec(21)) and planner.expand(spec(8, trajectories=False))


def test_all_of_a_split_given_as_its_size_is_the_same_network_as_null():
    def spec(train_size=None):
        return parse_spec({"name": "s", "datasets": [{"name": "cifar10", "train_size": train_size}],
                           "grid": {"widths": [100], "depths": [2], "learning_rates": [0.01], "batch_sizes": [128]},
                           "budget": {"max_epochs": 500}})

    # train_size 50000 is all of CIFAR-10's training split: the same network, id and plan as null
    ids = [[m.network_id for b in planner.expand(spec(t)) for m in b.members] for t in (None, 50000)]
    assert ids[0] == ids[1]
    budget = spec().budget
    net = planner.expand(spec(50000))[0].members[0]
    assert costs.expected_epochs(net, budget) == costs.expected_epochs(planner.expand(spec())[0].members[0], budget)


def test_a_batch_of_one_where_batch_norm_sees_1x1_maps_is_refused_before_anything_starts():
    def spec(batch, pooling="conv", norm=True):
        return parse_spec({"name": "bn", "architecture": "cnn", "datasets": ["digits"],
                           "grid": {"widths": [4], "depths": [1], "stages": [3], "poolings": [pooling],
                                    "kernel_sizes": [1], "batch_norm": [norm], "optimizers": ["sgd"], "learning_rates": [0.01],
                                    "batch_sizes": [batch]},
                           "budget": {"max_epochs": 1}})

    # 1297 digits in batches of 16 leave one; three stride-2 convolutions take 8×8 to 1×1 (1×1 kernels: the
    # outer weights of larger ones would meet no pixel of the 2×2 map the last one halves).
    with pytest.raises(SpecError, match=r"1297 training examples in batches of 16 leave a last batch of 1, and "
                                        r"batch normalisation of digits vgg 4c×1b×3s k1 conv flatten bn sees 1×1"):
        planner.expand(spec(16))
    with pytest.raises(SpecError, match="batch size 1"):
        planner.expand(spec(1))
    # What the trial would have met, in its first epoch's last batch:
    bundle = planner.expand(spec(32))[0]  # 1297 = 40·32 + 17
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        PopulationTrainer(BundleConfig((dataclasses.replace(bundle.members[0], batch_size=16),)),
                          load_dataset(DataSpec("digits")), Budget(max_epochs=1)).train_epoch()
    # Maps of 2×2 or more (max pools keep the normalised maps at 8, 4 and 2), or no batch norm: any batch.
    for other in (spec(16, pooling="max"), spec(16, norm=False)):
        assert planner.expand(other)


def test_a_local_run_is_refused_what_the_machine_cannot_give_one_trial_or_bundle():
    gib = 2**30
    spec = cifar_spec(widths=(500,), depths=(2,), gpus_per_trial=2, gpus_per_scoring_actor=0.5, cpus_per_trial=4)
    bundles = planner.expand(spec, Card(80, "test"))
    problems = planner.local_problems(spec, bundles, cpus=8, gpus=1, memory_bytes=64 * gib)
    assert problems == [
        "resources.gpus_per_trial: 2, but this machine has 1 GPU(s) and Ray would never start one that asks more; "
        "use at most 1, or pass --address of a cluster whose nodes have that many"]
    assert planner.local_problems(spec, bundles, cpus=8, gpus=2, memory_bytes=gib) == []  # cards hold GPU bundles
    assert "cpus_per_trial: 4, but this machine has 2 CPU core(s)" in planner.local_problems(spec, bundles, 2, 2, None)[0]
    # On CPUs, the largest bundle against the memory: one network that does not fit, or too many together.
    cpu = cifar_spec(widths=(500,), depths=(2,), gpus_per_trial=0, gpus_per_scoring_actor=0, bundle_size=20)
    bundles = planner.expand(cpu)
    one, whole = (planner.estimate_bundle_bytes(b) for b in (BundleConfig(bundles[0].members[:1]), bundles[0]))
    assert planner.local_problems(cpu, bundles, 2, 0, whole) == []
    [problem] = planner.local_problems(cpu, bundles, 2, 0, (one + whole) // 2)
    assert f"a bundle of 20 network(s) cifar10 3072→500×2 needs about {whole / gib:.1f} GiB" in problem
    assert "set resources.bundle_size to fewer networks" in problem
    [problem] = planner.local_problems(cpu, bundles, 2, 0, one - 1)
    assert "use smaller widths or batch sizes" in problem


def test_auto_shares_cover_each_bundles_memory_and_the_trials_that_keep_a_card_busy():
    spec = cifar_spec(widths=(50, 500, 2000), depths=(2, 4), gpus_per_scoring_actor="auto")
    card = Card(24, "test")
    bundles = planner.expand(spec, card)
    shares = planner.gpu_shares(spec, bundles, card)
    for bundle in bundles:
        share = shares[bundle.bundle_id]
        assert share * card.usable_bytes >= planner.estimate_bundle_bytes(bundle, card)
        assert share >= 1 / planner.trials_to_keep_busy(bundle) - planner.SHARE_STEP
        assert share == round(share, 4) and 0 < share <= 1
    assert len(set(shares.values())) > 1  # different shapes, different shares
    scoring = planner.scoring_share(spec, bundles, card)
    need = planner.scoring_bytes(bundles, planner.scoring_batch(spec, bundles, card))
    assert 0 < scoring < 1 and scoring * card.usable_bytes >= need


def test_a_scoring_call_takes_as_many_checkpoints_as_fit_its_room_on_the_card():
    # 3072→2000×5 bundles: eight checkpoints' weights (scoring holds SCORING_COPIES of each) fit a
    # quarter of an H200 but not of an A10G, whose actor then takes fewer a call.
    spec = cifar_spec(gpus_per_scoring_actor="auto")
    for gib, expected in ((141, planner.SCORING_BATCH), (24, None)):
        card = Card(gib, "test")
        bundles = planner.expand(spec, card)
        batch, one = planner.scoring_batch(spec, bundles, card), planner.scoring_weight_bytes(bundles, 1)
        assert batch == (expected or batch) and 1 <= batch <= planner.SCORING_BATCH
        if batch < planner.SCORING_BATCH:
            assert batch * one <= planner.SCORING_ROOM * card.usable_bytes < (batch + 1) * one
        assert planner.scoring_bytes(bundles, batch) >= batch * one
        assert f"up to {batch} checkpoint(s) a call" in planner.plan_summary(spec, bundles, card)
    assert batch < planner.SCORING_BATCH
    small = cifar_spec(widths=(50,), depths=(2,), gpus_per_scoring_actor="auto")
    assert planner.scoring_batch(small, planner.expand(small, card), card) == planner.SCORING_BATCH
    digits = load_spec("digits")  # scored on CPUs: one checkpoint a call
    assert planner.scoring_batch(digits, planner.expand(digits), None) == 1


def test_a_scoring_batch_leaves_the_largest_trial_its_card_or_keeps_to_a_fixed_share():
    # On 16 GiB a quarter of the card holds three of paper-datasets' largest checkpoints, but an
    # actor scoring three would not fit beside a trial at half the card: it takes fewer.
    spec = load_spec("paper-datasets")
    card = Card(16, "test")
    bundles = planner.expand(spec, card)
    batch, trial = planner.scoring_batch(spec, bundles, card), max(planner.gpu_shares(spec, bundles, card).values())
    share = planner.scoring_share(spec, bundles, card)
    assert 1 <= batch and share + trial <= 1
    assert planner.scoring_weight_bytes(bundles, batch + 1) > planner.SCORING_ROOM * card.usable_bytes or \
        planner._share(planner.scoring_bytes(bundles, batch + 1), card) + trial > 1
    planner.check_scoring_room(spec, bundles, planner.gpu_shares(spec, bundles, card), share)
    # A fixed share: as many as its memory holds.
    fixed = cifar_spec(gpus_per_scoring_actor=0.1)
    card = Card(80, "test")
    bundles = planner.expand(fixed, card)
    batch = planner.scoring_batch(fixed, bundles, card)
    assert 1 <= batch < planner.SCORING_BATCH
    assert planner.scoring_bytes(bundles, batch) <= 0.1 * card.usable_bytes < planner.scoring_bytes(bundles, batch + 1)
    assert planner.plan_notes(fixed, bundles, card) == []
    # One too small for a single checkpoint is said before the run (the actor may run out of memory).
    small = cifar_spec(gpus_per_scoring_actor=0.02)
    bundles = planner.expand(small, card)
    assert planner.scoring_batch(small, bundles, card) == 1
    [note] = planner.plan_notes(small, bundles, card)
    assert note.startswith("resources.gpus_per_scoring_actor: 0.02 of the 80 GiB card holds 1.5 GiB, less than the ")
    assert "use auto" in note and f"note: {note}" in planner.plan_summary(small, bundles, card)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop"])
def test_memory_estimate_bounds_the_tensors_a_trainer_holds_at_once(optimizer):
    # Every tensor made while a trainer is built, trains an epoch (augmentation on) and writes
    # its state, tracked op by op: the most alive at once is within what the planner counts for
    # the bundle beyond its data set, and the count is not loose (a card would be left idle).
    members = tuple(NetworkConfig(DataSpec("digits"), 512, 4, "relu", optimizer, 0.001, 128, 0.0, True, s,
                                  "torch_default") for s in range(16))
    bundle = BundleConfig(members)
    data = load_dataset(DataSpec("digits"))
    with LiveBytes() as live:
        trainer = PopulationTrainer(bundle, data, Budget(max_epochs=2))
        trainer.train_epoch()
        trainer.state_dict()
    estimate = planner.estimate_bundle_bytes(bundle) - planner.shared_bytes(members[0])
    assert live.peak <= estimate <= 1.2 * live.peak


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the peak a training epoch allocates on a card")
def test_cuda_memory_estimate_bounds_what_an_epoch_allocates_on_the_card():
    from sweep.training.data import load_dataset

    members = tuple(NetworkConfig(DataSpec("digits"), 512, 4, "relu", "adam", 0.001, 128, 0.0, True, s, "torch_default")
                    for s in range(16))
    bundle = BundleConfig(members)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    trainer = PopulationTrainer(bundle, load_dataset(DataSpec("digits"), "cuda"), Budget(max_epochs=2))
    trainer.train_epoch()
    trainer.state_dict()
    peak = torch.cuda.max_memory_allocated() - before
    estimate = planner.estimate_bundle_bytes(bundle) - planner.EVAL_BYTES
    assert peak <= estimate <= 3 * peak


@pytest.mark.ray
def test_ray_packs_the_planners_shares_without_overfilling_a_card(tmp_path, ray_session):
    """Ray 2.60 with fractional GPUs (ray-project/ray#5902 was an older Ray placing 0.15-GPU trials
    beyond what fit): trials of mixed shapes at the planner's shares, on a node Ray is told has 2
    GPUs; at no moment do the bundles on one card need more memory than it has."""
    from ray import tune

    spec = cifar_spec(widths=(500, 1000, 2000), depths=(2, 4), cpus_per_trial=0.05)
    card = Card(6, "test")
    bundles = planner.expand(spec, card)[:10]
    shares = planner.gpu_shares(spec, bundles, card)
    plan = sweep_plan.make_plan(spec, bundles, name="packed", storage=str(tmp_path), spec_source="-", spec_text="",
                            spec_suffix=".yaml", gpu_shares=shares)
    log = tmp_path / "placements"
    log.mkdir()

    def hold(config):
        import ray

        started = time.time()
        (Path(config["log"]) / f"started-{config['bundle']['bundle_id']}").touch()
        # Held while trials still start (a worker started late on a loaded machine must still
        # meet the others), then 3 s more: at least 6 s, at most 60.
        while time.time() - started < 60:
            last = max(p.stat().st_mtime for p in Path(config["log"]).glob("started-*"))
            if time.time() - started >= 6 and time.time() - last >= 3:
                break
            time.sleep(0.2)
        record = {"bundle": config["bundle"]["bundle_id"], "gpus": ray.get_gpu_ids(), "start": started,
                  "end": time.time()}
        (Path(config["log"]) / f"{record['bundle']}.json").write_text(json.dumps(record))
        tune.report({"done": True})

    tuner = tune.Tuner(
        tune.with_resources(hold, runner.trial_resources(plan)),
        param_space={"bundle": tune.grid_search(list(plan.bundles)), "log": str(log)},
        run_config=tune.RunConfig(name="packed", storage_path=str(tmp_path), verbose=0),
    )
    assert not any(r.error for r in tuner.fit())
    records = [json.loads(p.read_text()) for p in log.glob("*.json")]
    assert len(records) == len(bundles)
    need = {b.bundle_id: planner.estimate_bundle_bytes(b, card) for b in bundles}
    shapes = {b.bundle_id: (b.width, b.depth) for b in bundles}
    packed_shapes = set()
    for record in records:
        assert len(record["gpus"]) == 1  # a fractional share is one card's
        # What a card holds grows only when a trial starts: checking at every start checks every moment.
        t = record["start"]
        together = [r for r in records if r["gpus"] == record["gpus"] and r["start"] <= t < r["end"]]
        assert sum(need[r["bundle"]] for r in together) <= card.usable_bytes
        assert sum(shares[r["bundle"]] for r in together) <= 1 + 1e-9
        if len({shapes[r["bundle"]] for r in together}) > 1:
            packed_shapes.add(tuple(sorted(r["bundle"] for r in together)))
    assert packed_shapes, "no card ever held bundles of two shapes at once"
    cards = int(ray_session.cluster_resources()["GPU"])
    assert {str(r["gpus"][0]) for r in records} == {str(i) for i in range(cards)}


# ---- the cost model -------------------------------------------------------------------------


def test_calibrated_rates_reproduce_the_steps_they_were_fitted_to():
    # docs/performance.md, NVIDIA H200, 2026-12-04, bench/calibrate.py, batch 128: model-steps/s
    # of the two shapes at M = 16 and 64 in each precision (the fit's largest residual was 2%).
    h200 = costs.calibration("h200")
    measured = {"fp32": (30_410, 61_210, 10_305, 12_088), "tf32": (50_780, 77_906, 14_211, 16_210),
                "bf16": (47_286, 73_601, 12_992, 15_069)}
    shapes = [(256, 3, "mnist", 16), (256, 3, "mnist", 64), (512, 4, "cifar10", 16), (512, 4, "cifar10", 64)]
    for precision, rates in measured.items():
        for (width, depth, data, members), rate in zip(shapes, rates):
            net = NetworkConfig(DataSpec(data), width, depth, "relu", "momentum", 0.01, 128, 0.0, False, 0,
                                "torch_default", precision)
            flops = costs.step_flops(BundleConfig((net,)))
            seconds = costs.step_seconds(h200, precision, members=members, flops_per_member=flops)
            assert members / seconds == pytest.approx(rate, rel=0.025), (precision, width, members)


def test_point_flops_are_the_documented_counts():
    # docs/performance.md: 4.8 MFLOP (784→256×3→10) and 26.5 MFLOP (3072→512×4→10) per point for
    # the Jacobian norms; transitions add k forward passes above the first layer.
    assert costs.point_flops([784, 256, 256, 256, 10], None) == pytest.approx(4.845e6, rel=0.001)
    assert costs.point_flops([3072, 512, 512, 512, 512, 10], None) == pytest.approx(26.45e6, rel=0.001)
    above_first = 2 * (256 * 256 * 2 + 256 * 10)
    assert costs.point_flops([784, 256, 256, 256, 10], 256) - costs.point_flops([784, 256, 256, 256, 10], None) == \
        256 * above_first


def test_train_measures_are_counted_at_trained_checkpoints_only():
    # A PAC-Bayes search: the base accuracy and depth × samples perturbed copies; a margin measure
    # one pass; each a forward pass over the train points. (On this CPU, 8 nets 784→256×3→10 at
    # the default settings: the model's 1.63 TFLOP of searches took 27.4 s, 0.059 TFLOP/s, as the
    # calibrated scoring rate says.)
    scoring = costs.ScoringSettings(metrics=("pacbayes_sharpness", "spectral_margin", "loss"), train_points=100,
                                    sharpness_samples=3, sharpness_search_depth=4)
    assert costs.train_measure_flops(1e6, scoring, "end", 100) == (1 + 4 * 3 + 1) * 100 * 1e6
    assert costs.train_measure_flops(1e6, scoring, "epoch-000002", 100) == (1 + 4 * 3 + 1) * 100 * 1e6
    assert costs.train_measure_flops(1e6, scoring, "init", 100) == 0
    both = dataclasses.replace(scoring, metrics=("pacbayes_sharpness", "pacbayes_mag_flatness"))
    assert costs.train_measure_flops(1e6, both, "end", 100) == 2 * 13 * 100 * 1e6
    net = NetworkConfig(DataSpec("digits"), 8, 1, "relu", "sgd", 0.1, 64, 0.0, False, 0, "torch_default")
    bundle = BundleConfig((net,))
    forward = 2 * (64 * 8 + 8 * 10)
    assert costs.checkpoint_flops(bundle, scoring, "end") - costs.checkpoint_flops(bundle, scoring, "init") == \
        pytest.approx(14 * 100 * forward)


def test_trials_overlap_on_a_card_only_as_many_as_run_at_once():
    # Four small bundles would share a card sixteen ways by their shares, but only four exist, and
    # max_concurrent_trials: 1 runs them one after another.
    def spec(**resources):
        return parse_spec({"name": "o", "datasets": ["mnist"],
                           "grid": {"widths": [100, 400], "depths": [2, 4], "learning_rates": [0.01]},
                           "budget": {"max_epochs": 100},
                           "resources": {"gpus_per_trial": "auto", "gpu_memory_gib": 141, **resources}})

    for resources, at_once in (({}, 4), ({"max_concurrent_trials": 1}, 1)):
        parsed = spec(**resources)
        card = planner.card_for(parsed)
        bundles = planner.expand(parsed, card)
        assert len(bundles) == 4 and max(planner.trials_per_card(planner.gpu_shares(parsed, bundles, card)).values()) > 4
        expected = sum(costs.bundle_seconds(b, parsed.budget, costs.reference_gpu(), at_once)[0] for b in bundles)
        assert planner.reference_projection(parsed, bundles, card).training_s == pytest.approx(expected)


def test_projection_by_hand():
    device = costs.Calibration("test", "test card", "gpu", 10, 1.0, {"fp32": costs.Rates(1e-3, 0.0, 1e9)}, 1e9, "-")
    nets = tuple(NetworkConfig(DataSpec("digits"), 8, 1, "relu", "sgd", lr, 64, 0.0, False, 0, "torch_default")
                 for lr in (0.1, 0.2))
    bundle = BundleConfig(nets)
    budget = Budget(max_epochs=3, stop_at_full_train_acc=False)
    params = (64 + 1) * 8 + (8 + 1) * 10
    flops = 6 * 64 * params
    steps = 3 * math.ceil(1297 / 64)
    compute = steps * 2 * flops / 1e9
    alone = costs.project([bundle], budget, costs.ScoringSettings(metrics=("loss",)), device, {})
    assert alone.training_s == pytest.approx(compute + steps * 1e-3)
    assert alone.training_budget_s == alone.training_s  # no convergence entry without the stopping rule
    shared = costs.project([bundle], budget, costs.ScoringSettings(metrics=("loss",)), device, {bundle.bundle_id: 4})
    assert shared.training_s == pytest.approx(max(compute, (compute + steps * 1e-3) / 4))
    points = 500 + 1000  # 1000 of each split asked: digits' 500 test images are all scored
    checkpoint = 2 * points * costs.point_flops([64, 8, 10], None) / 1e9
    assert alone.scoring_s == pytest.approx(2 * checkpoint)
    # Checkpoints every k epochs: each multiple of k before the third epoch, whose is `end`.
    for every, epochs in ((1, 2), (2, 1), (3, 0), (4, 0)):
        periodic = costs.project([bundle], budget, costs.ScoringSettings(metrics=("loss",)), device, {}, every)
        assert periodic.scoring_s == pytest.approx((2 + epochs) * checkpoint)


def test_convolutional_networks_use_their_own_rates_or_say_they_do_not():
    fc, conv = costs.Rates(1e-3, 0.0, 1e9), costs.Rates(2e-3, 1e-4, 1e8)
    device = costs.Calibration("test", "test card", "gpu", 10, 1.0, {"fp32": fc}, 1e9, "-")
    calibrated = dataclasses.replace(device, conv_training={"fp32": conv}, conv_scoring_flops_per_s=1e7,
                                     conv_codes_flops_per_s=1e6)
    assert costs.training_rates(calibrated, "fp32", "cnn") == (conv, "")
    assert costs.training_rates(calibrated, "fp32", "fc") == (fc, "")
    assert costs.training_rates(device, "fp32", "cnn") == (
        fc, "convolutional steps not calibrated on test card: fully-connected rates used")
    rates, note = costs.training_rates(calibrated, "bf16", "cnn")
    assert rates == conv and note == "bf16 not calibrated on test card: fp32 rates used"

    nets = tuple(NetworkConfig(DataSpec("digits"), 4, 1, "relu", "sgd", lr, 64, 0.0, False, 0, "torch_default",
                               architecture="cnn", family="vgg", stages=1, kernel_size=3, pooling="max",
                               head="flatten") for lr in (0.1, 0.2))
    bundle, budget = BundleConfig(nets), Budget(max_epochs=3, stop_at_full_train_acc=False)
    scoring = costs.ScoringSettings(metrics=("jacobian_softmax", "transitions"), transitions_k=16)
    # By hand: conv 3×3 (1→4 channels, 8×8 pixels, padded), a 2×2 max pool, the 4·4·4 → 10 head.
    forward = 2 * 8 * 8 * 4 * 9 + 2 * 4 * 4 * 4 * 10
    assert forward_flops(nets[0], dataset_info(DataSpec("digits"))) == forward
    flops, steps = 3 * 64 * forward, 3 * math.ceil(1297 / 64)
    run = costs.project([bundle], budget, scoring, calibrated, {})
    assert run.training_s == pytest.approx(steps * (2e-3 + 2 * (1e-4 + flops / 1e8)))
    # 2 checkpoints × 2 members × 1500 points (digits' 500 test images, 1000 train): C = 10
    # vector-Jacobian products (3 forwards each), and 16 forward passes whose codes are compared,
    # each at its rate.
    assert run.scoring_s == pytest.approx(2 * 2 * 1500 * (3 * 10 * forward / 1e7 + 16 * forward / 1e6))
    assert run.notes == ()
    assert set(costs.project([bundle], budget, scoring, device, {}).notes) == {
        "convolutional steps not calibrated on test card: fully-connected rates used",
        "convolutional scoring not calibrated on test card: fully-connected rate used"}
    # This CPU's entry has convolutional rates (bench/calibrate.py --arch cnn); the H200's not yet.
    assert costs.reference_cpu().conv_training and not costs.reference_gpu().conv_training


def test_expected_epochs_come_from_the_convergence_table_or_the_budget():
    budget = Budget(max_epochs=150)

    def net(noise=0.0, aug=False, batch=64, width=32, **fields):
        return NetworkConfig(DataSpec("digits"), width, 1, "relu", "sgd", 0.1, batch, noise, aug, 0, "torch_default",
                             **fields)

    assert costs.expected_epochs(net(), budget) == (12.6, "measured")
    assert costs.expected_epochs(net(width=8), budget) == (12.6, "other widths")  # measured at 32-128
    assert costs.expected_epochs(net(0.2), budget) == (86.5, "measured")
    assert costs.expected_epochs(net(aug=True), budget) == (150, "budget")
    # Entries are measured with mini-batches on fully-connected networks: full batch and
    # convolutional networks are not counted at those epochs.
    assert costs.expected_epochs(net(batch=None), budget) == (150, "budget")
    assert costs.expected_epochs(net(architecture="cnn", family="vgg", stages=1, kernel_size=3, pooling="max",
                                     head="flatten"), budget) == (150, "budget")
    assert costs.expected_epochs(net(), Budget(max_epochs=5)) == (5, "measured")
    assert costs.expected_epochs(net(), Budget(max_epochs=150, stop_at_full_train_acc=False)) == (150, "budget")
    # paper-capacity's entries: width 50 was measured not to fit CIFAR10, 100x2 at momentum 0.001
    # took 398 epochs (the mean of seeds 0-2), and widths without their own entry take 500x2's
    # epochs at their rate, said to be measured at another width where they are not 500.
    cifar = functools.partial(NetworkConfig, DataSpec("cifar10"), depth=2, activation="relu", batch_size=128,
                              random_label_fraction=0.0, augmentation=False, seed=0, init="torch_default")
    budget = Budget(max_epochs=500)
    assert costs.expected_epochs(cifar(50, optimizer="sgd", learning_rate=0.05), budget) == (500, "not converging")
    assert costs.expected_epochs(cifar(100, optimizer="momentum", learning_rate=0.001), budget) == (398, "measured")
    assert costs.expected_epochs(cifar(2000, optimizer="sgd", learning_rate=0.01), budget) == (132, "other widths")
    assert costs.expected_epochs(cifar(500, optimizer="sgd", learning_rate=0.01), budget) == (132, "measured")
    assert costs.expected_epochs(cifar(2000, optimizer="momentum", learning_rate=0.01), budget) == (
        500, "not converging")
    # Depths 3-5 have their own entries at width 100 (at momentum 0.005 each stalled short of
    # 100%; at SGD 0.05 depths 4 and 5 did), depth 5 at width 200 too; other depths take depth 2's.
    assert costs.expected_epochs(cifar(100, depth=3, optimizer="momentum", learning_rate=0.001), budget) == (
        331, "measured")
    assert costs.expected_epochs(cifar(100, depth=3, optimizer="momentum", learning_rate=0.005), budget) == (
        500, "not converging")
    assert costs.expected_epochs(cifar(100, depth=4, optimizer="sgd", learning_rate=0.05), budget) == (
        500, "not converging")
    assert costs.expected_epochs(cifar(200, depth=5, optimizer="momentum", learning_rate=0.005), budget) == (
        109, "measured")
    assert costs.expected_epochs(cifar(100, depth=5, optimizer="sgd", learning_rate=0.05), budget) == (
        500, "not converging")
    assert costs.expected_epochs(cifar(200, depth=3, optimizer="sgd", learning_rate=0.05), budget) == (77, "measured")
    # hard_tanh and relu6 have their own entries (hard_tanh at widths 100 and 200, relu6 at 100) at
    # depths without their own; where a depth has its entry, the depth's entry wins ...
    assert costs.expected_epochs(cifar(200, activation="hard_tanh", optimizer="sgd", learning_rate=0.05),
                                 budget) == (97, "measured")
    assert costs.expected_epochs(cifar(200, depth=5, activation="hard_tanh", optimizer="sgd", learning_rate=0.05),
                                 budget) == (129, "measured")
    assert costs.expected_epochs(cifar(100, activation="relu6", optimizer="sgd", learning_rate=0.01),
                                 budget) == (441, "measured")  # seeds 0, 1: 459, 423
    assert costs.expected_epochs(cifar(100, depth=3, activation="relu6", optimizer="sgd", learning_rate=0.01),
                                 budget) == (397, "measured")
    # ... unless the activation has an entry at that depth: hard_tanh and relu6 100x3 converged at
    # momentum 0.005 (363 and 232 epochs), where relu 100x3 stalled; hard_tanh 100x4 stalled as relu did.
    assert costs.expected_epochs(cifar(100, depth=3, activation="hard_tanh", optimizer="momentum",
                                       learning_rate=0.005), budget) == (363, "measured")
    assert costs.expected_epochs(cifar(100, depth=3, activation="relu6", optimizer="momentum",
                                       learning_rate=0.005), budget) == (232, "measured")
    assert costs.expected_epochs(cifar(100, depth=4, activation="hard_tanh", optimizer="momentum",
                                       learning_rate=0.005), budget) == (500, "not converging")
    assert costs.expected_epochs(cifar(100, depth=4, activation="hard_tanh", optimizer="sgd",
                                       learning_rate=0.05), budget) == (476, "measured")  # seeds 0, 1: 453, 499
    assert costs.expected_epochs(cifar(100, depth=5, activation="hard_tanh", optimizer="sgd",
                                       learning_rate=0.05), budget) == (500, "not converging")
    # relu6 converged at both top rates at depth 4 (291, 340) and at SGD 0.05 at depth 5 (seeds 0, 1: 444, 465), and
    # stalled as relu did at momentum 0.005 at depth 5 (the depth's entry).
    for depth, optimizer, rate, expected in ((4, "sgd", 0.05, (291, "measured")), (4, "momentum", 0.005, (340, "measured")),
                                             (5, "sgd", 0.05, (454.5, "measured")),
                                             (5, "momentum", 0.005, (500, "not converging"))):
        assert costs.expected_epochs(cifar(100, depth=depth, activation="relu6", optimizer=optimizer,
                                           learning_rate=rate), budget) == expected


def test_the_most_specific_convergence_entry_counts_and_null_epochs_mean_the_budget(monkeypatch):
    table = {"convergence": [
        {"dataset": "digits", "train_size": None, "epochs": 20},
        {"dataset": "digits", "train_size": None, "optimizer": "sgd", "learning_rate": 0.1, "epochs": 25},
        {"dataset": "digits", "train_size": None, "optimizer": "momentum", "learning_rate": 0.3, "epochs": 35},
        {"dataset": "digits", "train_size": None, "width": 8, "optimizer": "sgd", "epochs": 40},
        {"dataset": "digits", "train_size": None, "width": 8, "epochs": 30},
        {"dataset": "digits", "train_size": None, "width": 8, "optimizer": "sgd", "learning_rate": 0.01,
         "epochs": None},
        {"dataset": "digits", "train_size": None, "depth": 3, "epochs": 999},
        {"dataset": "mnist", "train_size": None, "width": 16, "epochs": 5},
    ]}
    monkeypatch.setattr(costs, "_table", lambda: table)
    budget = Budget(max_epochs=150)

    def net(width=8, optimizer="sgd", lr=0.1):
        return NetworkConfig(DataSpec("digits"), width, 1, "relu", optimizer, lr, 64, 0.0, False, 0, "torch_default")

    assert costs.expected_epochs(net(), budget) == (40, "measured")  # width and optimizer beat width alone
    assert costs.expected_epochs(net(optimizer="momentum"), budget) == (30, "measured")
    # A width beats an optimizer and learning rate; without one, the rate's entry beats none.
    assert costs.expected_epochs(net(optimizer="momentum", lr=0.3), budget) == (30, "measured")
    assert costs.expected_epochs(net(width=16), budget) == (25, "measured")
    assert costs.expected_epochs(net(width=16, lr=0.3), budget) == (20, "measured")
    assert costs.expected_epochs(net(lr=0.01), budget) == (150, "not converging")
    assert costs.expected_epochs(net(lr=0.01), Budget(max_epochs=10)) == (10, "not converging")
    # Entries whose narrowing fields do not match (depth 3, not 1) or whose data differ never count.
    assert costs.expected_epochs(net(width=16, lr=0.01), budget) == (20, "measured")


@pytest.mark.parametrize("preset", [name for name, _ in list_presets()])
def test_every_presets_dry_run_projects_its_cost_without_data_or_gpus(preset, capsys):
    code = main(["run", preset, "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "projected time" in captured.out and "on one NVIDIA H200" in captured.out
    if load_spec(preset).resources.uses_gpus:
        card = planner.local_card()  # a machine with a card plans for it, others assume the H200
        assert "GPU share" in captured.out
        assert (card.source if card else "assumed: an NVIDIA H200") in captured.out


def test_presets_show_the_cost_model_not_hand_typed_guesses(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, description in list_presets():
        assert "hour" not in description.lower() and "bundles of" not in description
        spec = load_spec(name)
        card = planner.card_for(spec, assume=True)
        bundles = planner.expand(spec, card)
        per_card = planner.trials_per_card(planner.gpu_shares(spec, bundles, card)) if card else {}
        per_card = {b: min(k, len(bundles)) for b, k in per_card.items()}  # no more overlap than bundles
        cost = costs.project(bundles, spec.budget, spec.scoring, costs.reference_gpu(), per_card,
                             spec.checkpoints.every_epochs)
        assert f"{len(bundles)} bundles; projected {costs.hours(cost.total_s)} on one NVIDIA H200" in out
        if card is None:  # CPU presets say their time on this machine's cores too, as their dry run does
            run = costs.project(bundles, spec.budget, spec.scoring, costs.reference_cpu(), {},
                                spec.checkpoints.every_epochs)
            trials = min(math.floor(os.cpu_count() / spec.resources.cpus_per_trial), len(bundles))
            assert (f"on {os.cpu_count()} CPU core(s), {trials} trial(s) at once: training about "
                    f"{costs.hours(run.training_s / trials)}") in out
            # and what a local sweep takes beside training and scoring, as measured on the reference CPU
            start = costs.reference_cpu().sweep_start_s
            assert start and f"and about {costs.hours(start)} to start Ray and Tune, the trials and the end" in out
    assert sum(planner.card_for(load_spec(name), assume=True) is None for name, _ in list_presets()) == 2


def test_an_image_folder_is_sized_from_its_files(tmp_path):
    from PIL import Image

    for split, count in (("train", 6), ("test", 2)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (5, 4), (i, 0, 0)).save(folder / f"{i}.png")
    spec = parse_spec({"name": "f", "datasets": [{"name": "image_folder", "path": str(tmp_path), "train_size": 10}],
                       "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1]}, "budget": {"max_epochs": 1}})
    info = planner.dataset_info(spec.datasets[0])
    assert (info.train_size, info.test_size, info.input_dim, info.num_classes) == (10, 4, 3 * 5 * 4, 2)
    bundle = planner.expand(spec)[0]
    assert planner.estimate_bundle_bytes(bundle) is not None and costs.step_flops(bundle) == 6 * 10 * (61 * 8 + 9 * 2)
    missing = parse_spec({**{"name": "g", "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1]},
                             "budget": {"max_epochs": 1}}, "datasets": [{"name": "image_folder", "path": "/nonexistent"}]})
    assert planner.dataset_info(missing.datasets[0]).input_dim is None


@pytest.mark.ray
def test_scoring_actors_auto_is_one_per_gpu_of_the_cluster(tmp_path, ray_session):
    # The session's Ray is told of 2 GPUs (or has the machine's real ones).
    cards = int(ray_session.cluster_resources()["GPU"])
    def plan_of(spec):
        card = Card(24, "test") if spec.resources.uses_gpus else None
        bundles = planner.expand(spec, card)
        return sweep_plan.make_plan(spec, bundles, name="n", storage=str(tmp_path), spec_source="-", spec_text="",
                                spec_suffix=".yaml", gpu_shares=planner.gpu_shares(spec, bundles, card),
                                scoring_share=planner.scoring_share(spec, bundles, card),
                                scoring_batch=planner.scoring_batch(spec, bundles, card))

    gpu = plan_of(cifar_spec(scoring_actors="auto", gpus_per_scoring_actor="auto"))
    sweep_plan.save_plan(gpu)  # the batch goes with the plan, as `sweep resume` and `score` read it
    kwargs = runner.scoring_pool_kwargs(sweep_plan.load_plan(gpu.sweep_dir))
    assert kwargs["num_actors"] == cards and 0 < kwargs["gpus_per_actor"] < 1
    spec = cifar_spec(scoring_actors="auto", gpus_per_scoring_actor="auto")
    assert kwargs["batch"] == planner.scoring_batch(spec, planner.expand(spec, Card(24, "test")), Card(24, "test"))
    cpu = plan_of(parse_spec({"name": "c", "datasets": ["digits"], "grid": {"widths": [8], "depths": [1],
                                                                            "learning_rates": [0.1]},
                              "budget": {"max_epochs": 1}, "resources": {"scoring_actors": "auto"}}))
    assert runner.scoring_pool_kwargs(cpu)["num_actors"] == 1


@pytest.mark.ray
def test_asks_no_node_of_the_cluster_can_give_are_named(tmp_path, ray_session):
    # The session's Ray is one node of 2 CPUs (and 2 GPUs, or the machine's real ones).
    cards = ray_session.cluster_resources()["GPU"]

    def plan_of(cpus: float, gpus: float, scorer_cpus: float, scorer_gpus: float):
        spec = parse_spec({"name": "c", "datasets": ["digits"], "grid": {"widths": [8], "depths": [1],
                                                                         "learning_rates": [0.1]},
                           "budget": {"max_epochs": 1},
                           "resources": {"cpus_per_trial": cpus, "gpus_per_trial": gpus, "gpu_memory_gib": 24,
                                         "cpus_per_scoring_actor": scorer_cpus,
                                         "gpus_per_scoring_actor": scorer_gpus}})
        bundles = planner.expand(spec, planner.card_for(spec))
        return sweep_plan.make_plan(spec, bundles, name="n", storage=str(tmp_path), spec_source="-", spec_text="",
                                    spec_suffix=".yaml", gpu_shares={}, scoring_share=None, scoring_batch=1)

    assert runner.unplaceable(plan_of(2, cards, 2, cards), trials=True, scoring=True) == []
    trial, scorer = runner.unplaceable(plan_of(3, 0, 1, cards + 1), trials=True, scoring=True)
    assert trial.startswith("no node of the Ray cluster has the 3 CPU core(s) and 0 GPU(s) a trial asks "
                            "(resources.cpus_per_trial and gpus_per_trial); of its 1 node(s), the most CPU cores one "
                            f"has are 2, the most GPUs {cards:g}."), trial
    assert scorer.startswith(f"no node of the Ray cluster has the 1 CPU core(s) and {cards + 1:g} GPU(s) a scoring "
                             "actor asks"), scorer
    # Both on one node: 2 CPUs with the cards, each within the node on its own, is one ask too many for none.
    assert runner.unplaceable(plan_of(1, cards, 3, 0), trials=True, scoring=False) == []
    assert len(runner.unplaceable(plan_of(1, cards, 3, 0), trials=False, scoring=True)) == 1


def test_progress_says_when_no_trial_runs_for_a_while():
    import io
    from types import SimpleNamespace

    from sweep.command.callbacks import ProgressCallback

    stream = io.StringIO()
    progress = ProgressCallback(2, 8, stream=stream, quiet_s=0.2)
    progress.setup()
    waiting = [SimpleNamespace(trial_id=b, status="PENDING", config={"bundle": {"bundle_id": b}}, last_result={})
               for b in ("a", "b")]
    progress.on_step_end(0, waiting)
    assert stream.getvalue() == ""  # not before quiet_s
    time.sleep(0.3)
    progress.on_step_end(1, waiting)
    progress.on_step_end(2, waiting)  # once a quiet period
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[sweep] bundles 0/2 done, 0 running, 2 waiting")
    assert lines[0].endswith("none running: waiting for Ray to give a trial its resources (other work on the "
                             "cluster, or no node large enough)")
    running = [SimpleNamespace(**{**vars(waiting[0]), "status": "RUNNING"}), waiting[1]]
    assert "none running" not in progress.line(running, 1.0)


def test_progress_counts_each_bundle_by_its_projected_time_and_epochs():
    from types import SimpleNamespace

    from sweep.command.callbacks import ProgressCallback

    def trial(bundle_id, status, epoch=None):
        return SimpleNamespace(trial_id=bundle_id, status=status, config={"bundle": {"bundle_id": bundle_id}},
                               last_result={} if epoch is None else {"epoch": epoch})

    progress = ProgressCallback(2, 8, weights={"big": (3.0, 10.0), "small": (1.0, 20.0)})
    first = [trial("big", "RUNNING", 2), trial("small", "PENDING")]
    assert progress.fraction_done(first) == pytest.approx(3 * 0.2 / 4)
    assert progress.line(first, 10.0).endswith("about ? left")  # no rate yet
    later = [trial("big", "RUNNING", 6), trial("small", "TERMINATED")]
    fraction = (3 * 0.6 + 1) / 4
    assert progress.fraction_done(later) == pytest.approx(fraction)
    # The share grew from 0.15 to 0.7 in the 20 s since the first line: the rest at that rate.
    assert progress.line(later, 30.0).endswith(f"about {20 * (1 - fraction) / (fraction - 0.15):.0f}s left")
    # Past its expected epochs a running bundle is not counted done.
    assert progress.fraction_done([trial("big", "RUNNING", 50), trial("small", "ERROR")]) == pytest.approx((3 * 0.99 + 1) / 4)
    # Without weights: finished bundles, equally.
    plain = ProgressCallback(2, 8)
    assert plain.fraction_done([trial("big", "RUNNING", 6), trial("small", "TERMINATED")]) == 0.5
    # The digits preset's weights: every bundle, its projected seconds on this CPU's calibration.
    spec = load_spec("digits")
    bundles = planner.expand(spec, None)
    weights = costs.progress_weights(bundles, spec.budget, costs.reference_cpu())
    assert set(weights) == {b.bundle_id for b in bundles}
    for bundle in bundles:
        assert weights[bundle.bundle_id] == (costs.bundle_seconds(bundle, spec.budget, costs.reference_cpu())[0],
                                             costs.bundle_epochs(bundle, spec.budget))
