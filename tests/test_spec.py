"""Sweep specs: validation messages, presets, expansion and stable ids."""

import copy
import itertools
import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from PIL import Image

from sweep.plan.networks import BundleConfig, NetworkConfig, limit_networks, merged_batch_sizes, networks
from sweep.plan.planner import expand, plan_summary, points_notes
from sweep.command.cli import main
from sweep.plan.presets import list_presets, preset_path
from sweep.plan.spec import SpecError, _load_yaml, load_spec, parse_spec

VALID = {
    "name": "small",
    "datasets": ["digits"],
    "grid": {"widths": [8, 16], "depths": [1, 2], "optimizers": ["sgd", "adam"],
             "learning_rates": {"sgd": [0.1, 0.03], "adam": [0.001]},
             "batch_sizes": [32, None], "random_label_fractions": [0.0, 0.5],
             "seeds": [0, 1, 2]},
    "budget": {"max_epochs": 5},
    "resources": {"bundle_size": 4},
}


def with_change(path: str, value):
    spec = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


DELETE = object()
MALFORMED = [
    (with_change("colour", "blue"), "colour: unknown key"),
    (with_change("grid.widths", [32, -3]), "grid.widths[1]: expected a positive integer, got -3"),
    (with_change("grid.widths", []), "grid.widths: must not be empty"),
    (with_change("grid.depths", "2"), "grid.depths: expected a list"),
    (with_change("grid.seeds", [0, 0]), "grid.seeds: duplicate"),
    (with_change("datasets", ["imagenet"]), "datasets[0].name: unknown value 'imagenet'"),
    (with_change("datasets", [{"name": "digits", "train_size": -10}]),
     "datasets[0].train_size: expected a positive integer or null, got -10"),
    (with_change("datasets", [{"name": "digits", "train_size": 5000}]),
     "datasets[0].train_size: digits has 1297"),
    (with_change("datasets", [{"name": "image_folder"}]), "datasets[0].path: required"),
    (with_change("budget.max_epochs", 2.5), "budget.max_epochs: expected a positive integer"),
    (with_change("budget", {}), "budget.max_epochs: required key is missing"),
    (with_change("budget.stop_at_full_train_acc", "yes"),
     "budget.stop_at_full_train_acc: expected true or false"),
    (with_change("grid.learning_rates", {"sgd": [0.1]}), "grid.learning_rates.adam: missing"),
    (with_change("grid.learning_rates", [0.1, -0.01]), "grid.learning_rates[1]: expected a positive number, got -0.01"),
    (with_change("grid.random_label_fractions", [1.5]),
     "grid.random_label_fractions[0]: expected a number in [0.0, 1.0]"),
    (with_change("grid.activations", ["swish"]), "grid.activations[0]: unknown value 'swish'"),
    (with_change("resources.bundle_size", 0), "resources.bundle_size: expected a positive integer"),
    (with_change("resources.gpus", 1), "resources.gpus: unknown key"),
    (with_change("resources.cpus_per_trial", 0), "resources.cpus_per_trial: 0 with no GPU per trial"),
    (with_change("scoring", {"train_points": 0, "metrics": ["spectral_margin"]}),
     "scoring.train_points: 0, but metrics asks only for spectral_margin"),
    (with_change("scoring", {"sharpness_target": 1.5}), "scoring.sharpness_target: expected a number in (0, 1), got 1.5"),
    (with_change("scoring", {"metrics": ["jacobian"]}), "scoring.metrics[0]: unknown value"),
    (with_change("grid", DELETE), "grid: required key is missing"),
]


@pytest.mark.parametrize("raw, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_spec_names_the_key(tmp_path, raw, message):
    with pytest.raises(SpecError, match="^" + re.escape(message)):
        parse_spec(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_unknown_preset_and_missing_file():
    with pytest.raises(SpecError, match=r"unknown preset 'digitz'; available presets: cnn-capacity, cnn-factors, "
                                        r"digits, digits-cnn, paper-capacity"):
        load_spec("digitz")
    with pytest.raises(SpecError, match="not found"):
        load_spec("no/such/spec.yaml")


def test_invalid_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("grid: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: ok\ngrid: [unclosed\n")
    with pytest.raises(SpecError, match=rf'in "{re.escape(str(path))}", line 3') as info:
        load_spec(path)
    assert "<unicode string>" not in str(info.value)


def test_numbers_in_exponent_notation_are_numbers_as_in_toml(tmp_path):
    """PyYAML's YAML 1.1 rules read 1e-3 as the text '1e-3'; YAML 1.2 and TOML read a number."""
    numbers = "[3e-2, 1.0e-1, 2E+0, -1e-2, 1e3]"
    assert _load_yaml(numbers, "t") == tomllib.loads(f"v = {numbers}")["v"] == [0.03, 0.1, 2.0, -0.01, 1000.0]
    assert _load_yaml("[.5e-1, 1_0e-1, 1e-3x, 10, 0x10, 0.1]", "t") == [0.05, 1.0, "1e-3x", 10, 16, 0.1]
    spec = tmp_path / "rates.yaml"
    spec.write_text(yaml.safe_dump(VALID).replace("0.03", "3e-2").replace("0.001", "1e-3"))
    assert "3e-2" in spec.read_text() and load_spec(spec) == parse_spec(VALID)
    # Text fields keep the text as written.
    spec.write_text(yaml.safe_dump(VALID).replace("name: small", "name: 1e5\nstorage: 2e3"))
    assert (load_spec(spec).name, load_spec(spec).storage) == ("1e5", "2e3")


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # say, where someone keeps the digits sweep's output
    assert load_spec("digits") == load_spec(preset_path("digits"))
    (tmp_path / "mine").mkdir()
    with pytest.raises(SpecError, match="'mine' is not a regular file"):
        load_spec("mine")


def test_a_spec_suffix_in_capitals_is_read_by_its_format(tmp_path):
    toml = tmp_path / "SMALL.TOML"
    toml.write_text('name = "small"\ndatasets = ["digits"]\n[grid]\nwidths = [8]\ndepths = [1]\n'
                    'learning_rates = [0.1]\n[budget]\nmax_epochs = 5\n')
    assert load_spec(toml).grid.widths == (8,)


def test_cli_style_exit_before_anything_starts(tmp_path):
    """A bad spec fails in a fresh interpreter without importing Ray or torch, through the
    command too, and a dry run (of a CIFAR-10 preset too, whose data is checked) plans without them."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_change("grid.widths", [-3])))
    code = ("import sys; from sweep.plan.spec import load_spec, SpecError\n"
            "try:\n    load_spec(sys.argv[1])\nexcept SpecError as e:\n"
            "    print(e); print('ray' in sys.modules, 'torch' in sys.modules); sys.exit(2)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "grid.widths[0]" in result.stdout and "False False" in result.stdout
    command = ("import sys; from sweep.command.cli import main\ncode = main(sys.argv[1:])\n"
               "print('loaded', [m for m in ('ray', 'torch', 'matplotlib') if m in sys.modules]); sys.exit(code)")
    for argv, status in (["run", str(path)], 2), (["run", "digits", "--dry-run"], 0), \
                        (["run", "paper-capacity", "--dry-run"], 0):
        result = subprocess.run([sys.executable, "-c", command, *argv, "--storage", str(tmp_path / "s")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == status and "loaded []" in result.stdout, (argv, result.stdout, result.stderr)


def test_toml_spec_equals_yaml(tmp_path):
    toml = tmp_path / "small.toml"
    toml.write_text("""
name = "small"
datasets = ["digits"]
[grid]
widths = [8, 16]
depths = [1, 2]
optimizers = ["sgd", "adam"]
batch_sizes = [32, "full"]
random_label_fractions = [0.0, 0.5]
seeds = [0, 1, 2]
[grid.learning_rates]
sgd = [0.1, 0.03]
adam = [0.001]
[budget]
max_epochs = 5
[resources]
bundle_size = 4
""")
    assert load_spec(toml) == parse_spec(VALID)


def test_expansion_counts_and_bundles():
    spec = parse_spec(VALID)
    nets = networks(spec)
    # widths 2 × depths 2 × (sgd 2 + adam 1) × batches 2 × noise 2 × seeds 3, by brute force:
    expected = {(w, d, o, lr, b, f, s) for w in (8, 16) for d in (1, 2)
                for o, lrs in (("sgd", (0.1, 0.03)), ("adam", (0.001,))) for lr in lrs
                for b in (32, None) for f in (0.0, 0.5) for s in (0, 1, 2)}
    assert {(n.width, n.depth, n.optimizer, n.learning_rate, n.batch_size,
             n.random_label_fraction, n.seed) for n in nets} == expected
    assert len(nets) == len(expected) == spec.grid.size() == 144
    assert len({n.network_id for n in nets}) == 144

    bundles = expand(spec)
    members = [m for b in bundles for m in b.members]
    assert sorted(m.network_id for m in members) == sorted(n.network_id for n in nets)
    for b in bundles:
        assert 1 <= len(b.members) <= 4
        assert len({(m.width, m.depth, m.optimizer, m.batch_size) for m in b.members}) == 1
    # A group of 12 sgd networks (2 lr × 2 noise × 3 seeds) splits into 3 bundles of 4;
    # a group of 6 adam networks into 2 bundles of 3 (even sizes, not 4 + 2).
    sizes = sorted(len(b.members) for b in bundles if b.optimizer == "adam")
    assert sizes == [3] * 16


def test_ids_are_stable_and_ignore_where_data_lives():
    net = networks(load_spec("digits"))[0]
    assert net.network_id == NetworkConfig.from_dict(json.loads(json.dumps(net.to_dict()))).network_id
    assert len(net.network_id) == 16
    moved = NetworkConfig.from_dict({**net.to_dict(),
                                     "dataset": {**net.to_dict()["dataset"], "data_root": "/x"}})
    assert moved.network_id == net.network_id
    reseeded = NetworkConfig.from_dict({**net.to_dict(), "seed": 99})
    assert reseeded.network_id != net.network_id
    # Pinned: a change here re-keys every stored result, so it must be deliberate.
    assert net.network_id == PINNED_FIRST_DIGITS_ID


PINNED_FIRST_DIGITS_ID = "443905e18f17aa37"


def test_training_precision_is_every_networks_and_part_of_its_id():
    fp32 = networks(parse_spec(VALID))
    bf16 = networks(parse_spec({**VALID, "training": {"precision": "bf16"}}))
    assert {n.precision for n in fp32} == {"fp32"} and {n.precision for n in bf16} == {"bf16"}
    assert {n.row()["precision"] for n in bf16} == {"bf16"}
    # A bf16 network is another network (its results differ); fp32 ids are those of sweeps from
    # before the option (pinned above), and a meta.json written then (no key) reads as fp32.
    assert not {n.network_id for n in fp32} & {n.network_id for n in bf16}
    old = {k: v for k, v in fp32[0].to_dict().items() if k != "precision"}
    assert NetworkConfig.from_dict(old) == fp32[0]
    with pytest.raises(SpecError, match=r"training.precision: unknown value 'fp16'; choose one of fp32, tf32, bf16"):
        parse_spec({**VALID, "training": {"precision": "fp16"}})


def test_bundle_round_trips_through_json():
    bundle = expand(load_spec("digits"))[0]
    again = BundleConfig.from_dict(json.loads(json.dumps(bundle.to_dict())))
    assert again == bundle and again.bundle_id == bundle.bundle_id
    assert again.network_ids == [m.network_id for m in bundle.members]


def test_bundle_refuses_mixed_shapes():
    a, b = networks(parse_spec(VALID))[0], networks(parse_spec(VALID))[-1]
    with pytest.raises(ValueError, match="differ in 'width'"):
        BundleConfig((a, b))


def test_presets_load_and_match_their_descriptions():
    presets = dict(list_presets())
    assert set(presets) == {"digits", "paper-trajectories", "paper-capacity", "paper-factors",
                            "paper-datasets", "digits-cnn", "cnn-capacity", "cnn-factors"}
    counts = {name: len(networks(load_spec(name))) for name in presets}
    assert counts["digits"] >= 48
    assert counts["paper-capacity"] == counts["cnn-capacity"] == 2160
    assert {load_spec(name).architecture for name in ("digits-cnn", "cnn-capacity", "cnn-factors")} == {"cnn"}
    for name, description in presets.items():
        assert f"{counts[name]} networks" in description, name
        assert load_spec(name).name == name
    digits = load_spec("digits")
    assert {len(digits.grid.widths) > 1, len(digits.grid.depths) > 1,
            len(digits.grid.rates[0][1]) > 1,
            len(digits.grid.random_label_fractions) > 1} == {True}


def test_plan_summary_reports_networks_bundles_and_memory():
    spec = load_spec("digits")
    text = plan_summary(spec, expand(spec))
    assert text.startswith("sweep digits: 48 networks in 6 bundles")
    assert "MiB" in text and "64→128×2" in text


def test_row_has_the_hyperparameter_columns():
    row = networks(parse_spec(VALID))[0].row()
    assert set(row) == {"network_id", "dataset", "train_size", "random_label_fraction",
                        "augmentation", "width", "depth", "activation", "optimizer",
                        "learning_rate", "batch_size", "full_batch", "seed", "init", "precision",
                        "architecture", "family", "stages", "kernel_size", "pooling", "head", "batch_norm",
                        "augmentation_shift", "augmentation_flips", "random_labels"}
    assert row["dataset"] == "digits" and row["full_batch"] is False


def test_limit_networks_keeps_the_first_ones():
    bundles = expand(load_spec("digits"))
    limited = limit_networks(bundles, 11)
    assert [len(b.members) for b in limited] == [8, 3]
    assert [m for b in limited for m in b.members] == [m for b in bundles for m in b.members][:11]
    assert limit_networks(bundles, 1000) == bundles


def test_plans_start_the_costliest_bundles_first(tmp_path):
    from sweep.plan import sweep_plan

    spec = load_spec("digits")
    bundles = expand(spec)
    plan = sweep_plan.make_plan(spec, bundles, name="ordered", storage=str(tmp_path), spec_source="digits",
                            spec_text="", spec_suffix=".yaml")
    shapes = [(b["members"][0]["width"], b["members"][0]["depth"]) for b in plan.bundles]
    assert shapes == [(128, 2), (128, 1), (64, 2), (64, 1), (32, 2), (32, 1)]
    assert sorted(b["bundle_id"] for b in plan.bundles) == sorted(b.bundle_id for b in bundles)


def test_profile_ellipses_need_a_multiple_of_3_points():
    spec = parse_spec({**VALID, "scoring": {"trajectories": True, "profile_points": 129}})
    assert spec.scoring.profile_points == 129
    with pytest.raises(SpecError, match=r"scoring.profile_points: must be a multiple of 3, .* got 256, use 255 or 258"):
        parse_spec({**VALID, "scoring": {"profile_points": 256}})


def test_the_json_schema_accepts_what_the_parser_accepts_and_refuses_what_it_refuses(capsys):
    """`sweep schema` is what editors check spec files with: jsonschema, an independent validator,
    must agree with the parser on every preset and on each malformed spec above (except the rules
    a schema cannot say: a data set's size, learning rates for every optimizer, distinct values, a
    trial's CPUs given its GPUs, train points given the metrics)."""
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for name, _ in list_presets():
        raw = yaml.safe_load(preset_path(name).read_text())
        assert not list(validator.iter_errors(raw)), name
    assert not list(validator.iter_errors(VALID))
    beyond_a_schema = ("train_size: digits has", "learning_rates.adam: missing", "duplicate", "with no GPU per trial",
                       "metrics asks only for")
    for raw, message in MALFORMED:
        if not any(rule in message for rule in beyond_a_schema):
            assert list(validator.iter_errors(raw)), message


def test_every_problem_is_named_up_to_a_few():
    raw = with_change("grid.widths", [0, "wide"])
    raw["budget"] = {"max_epochs": 0, "max_step": 3}
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert str(info.value).splitlines() == [
        "grid.widths[0]: expected a positive integer, got 0",
        "grid.widths[1]: expected a positive integer, got 'wide'",
        "budget.max_epochs: expected a positive integer, got 0",
        "budget.max_step: unknown key; allowed keys: max_epochs, max_steps, stop_at_full_train_acc",
    ]


def test_convolutional_keys_need_the_cnn_architecture_and_images_that_hold_the_stages():
    cnn = {**VALID, "architecture": "cnn",
           "grid": {**VALID["grid"], "families": ["vgg", "nin"], "heads": ["flatten", "gap"], "stages": [2, 3]}}
    nets = networks(parse_spec(cnn))
    assert len(nets) == 8 * parse_spec(VALID).grid.size()
    assert {(n.architecture, n.family, n.head, n.stages) for n in nets} == {
        ("cnn", f, h, s) for f in ("vgg", "nin") for h in ("flatten", "gap") for s in (2, 3)}
    # fc networks keep their ids: the new keys enter an id only when set
    assert networks(parse_spec(VALID))[0].row()["architecture"] == "fc"
    assert not {n.network_id for n in nets} & {n.network_id for n in networks(parse_spec(VALID))}
    bundles = expand(parse_spec(cnn))
    assert all(len({(m.family, m.head, m.stages) for m in b.members}) == 1 for b in bundles)
    with pytest.raises(SpecError, match=r"grid.families: a cnn-only key; set architecture: cnn"):
        parse_spec({**VALID, "grid": {**VALID["grid"], "families": ["nin"]}})
    with pytest.raises(SpecError, match=r"grid.stages: a cnn-only key; set architecture: cnn"):  # at its default too
        parse_spec({**VALID, "grid": {**VALID["grid"], "stages": [2]}})
    with pytest.raises(SpecError, match=r"grid.stages: 4 stages of 2×2 pools leave no pixels of digits's 8×8 images; "
                                        r"use at most 3"):
        parse_spec({**cnn, "grid": {**cnn["grid"], "stages": [4]}})
    # Stride-2 convolutions round up (8, 4, 2, 1): a fourth stage would work on 1×1 maps, doubling channels only.
    # (Kernels of 1: larger ones have weights that meet no pixel of the 2×2 map the third halves.)
    assert parse_spec({**cnn, "grid": {**cnn["grid"], "stages": [3], "poolings": ["conv"], "kernel_sizes": [1]}}
                      ).grid.stages == (3,)
    for stages in (4, 1000):
        with pytest.raises(SpecError, match=rf"grid.stages: {stages} stages of stride-2 convolutions shrink digits's "
                                            r"8×8 images to their smallest \(1×1; 2×2 with even kernels\) after 3, .* use at most 3"):
            parse_spec({**cnn, "grid": {**cnn["grid"], "stages": [stages], "poolings": ["conv"]}})
    with pytest.raises(SpecError, match=r"architecture: unknown value 'rnn'; choose one of fc, cnn"):
        parse_spec({**VALID, "architecture": "rnn"})


def test_kernels_with_weights_that_never_meet_a_pixel_are_refused():
    # The reference: which weights of a chain of k×k convolutions (padding k//2; a 2×2 pool, or a
    # stride-2 convolution, after each stage) on digits' 8×8 images get a gradient, by autograd.
    import torch

    def all_train(k: int, stages: int, depth: int, pooling: str) -> bool:
        x, weights = torch.randn(1, 1, 8, 8, dtype=torch.float64), []
        for _ in range(stages):
            for stride in [1] * depth + ([2] if pooling == "conv" else []):
                weights.append(torch.randn(1, 1, k, k, dtype=torch.float64, requires_grad=True))
                x = torch.nn.functional.conv2d(x, weights[-1], padding=k // 2, stride=stride)
            if pooling != "conv":  # avg, not max: a max-pool's gradient skips the pixels it did not pick
                x = torch.nn.functional.avg_pool2d(x, 2)
        x.pow(2).sum().backward()
        return all(bool((w.grad != 0).all()) for w in weights)

    cnn = {**VALID, "architecture": "cnn"}
    for stages, depth, pooling in itertools.product((1, 2, 3), (1, 2), ("avg", "conv")):
        grid = {**cnn["grid"], "stages": [stages], "depths": [depth], "poolings": [pooling]}
        for k in range(1, 19):
            spec = {**cnn, "grid": {**grid, "kernel_sizes": [k]}}
            if all_train(k, stages, depth, pooling):
                assert parse_spec(spec).grid.kernel_sizes == (k,)
            else:
                with pytest.raises(SpecError, match=rf"grid.kernel_sizes: {k} is larger than the \d+×\d+ maps"):
                    parse_spec(spec)
    with pytest.raises(SpecError, match=r"grid.kernel_sizes: 9 is larger than the 4×4 maps of digits's networks of 2 "
                                        r"stage\(s\) of depth 1 with max pooling: some of its weights only ever meet the "
                                        r"zero padding, so they never train but count in param_count and the weight "
                                        r"norms; use at most 7, or fewer stages"):
        parse_spec({**cnn, "grid": {**cnn["grid"], "stages": [1, 2], "kernel_sizes": [3, 9]}})


def test_random_label_draw_is_a_training_setting_of_networks_with_random_labels_only():
    uniform = networks(parse_spec(VALID))
    other = networks(parse_spec({**VALID, "training": {"random_labels": "other_class"}}))
    # Networks with true labels are the same networks (same ids) whatever the setting says.
    assert [n.network_id for n in uniform if not n.random_label_fraction] == \
           [n.network_id for n in other if not n.random_label_fraction]
    assert not {n.network_id for n in uniform if n.random_label_fraction} & \
           {n.network_id for n in other if n.random_label_fraction}
    # other_class is what sweeps before the option drew: their sweep.json's networks, without the
    # key, load as those networks, with the same ids.
    for net in other:
        old = NetworkConfig.from_dict({k: v for k, v in net.to_dict().items() if k != "random_labels"})
        assert old.random_labels == "other_class" and old.network_id == net.network_id
    assert {(r["random_label_fraction"], r["random_labels"]) for r in (n.row() for n in uniform)} == {
        (0.0, None), (0.5, "uniform")}
    other_spec = parse_spec({**VALID, "training": {"random_labels": "other_class"}})
    assert "; random labels other class" in plan_summary(other_spec, expand(other_spec)).splitlines()[1]
    true_only = parse_spec(with_change("grid.random_label_fractions", [0.0]))
    assert "random labels" not in plan_summary(true_only, expand(true_only))
    with pytest.raises(SpecError, match=r"training.random_labels: unknown value 'flip'; choose one of uniform, "
                                        r"other_class"):
        parse_spec({**VALID, "training": {"random_labels": "flip"}})


def test_augmentation_strength_is_a_training_setting_of_augmented_networks_only():
    aug = {**VALID, "grid": {**VALID["grid"], "augmentation": [False, True]}}
    plain = networks(parse_spec(aug))
    milder = networks(parse_spec({**aug, "training": {"augmentation_shift": 2, "augmentation_flips": False}}))
    # Networks without augmentation are the same networks (same ids) whatever the setting says.
    assert [n.network_id for n in plain if not n.augmentation] == [n.network_id for n in milder if not n.augmentation]
    assert not {n.network_id for n in plain if n.augmentation} & {n.network_id for n in milder if n.augmentation}
    # Without the setting, ids are those of sweeps written before it (the option enters when set).
    assert all(n.augmentation_shift is None and n.augmentation_flips for n in plain)
    rows = {(r["augmentation"], r["augmentation_shift"], r["augmentation_flips"]) for r in (n.row() for n in plain)}
    assert rows == {(False, 0, False), (True, 1, False)}  # digits: an 8×8 image's usual shift, never flipped
    # Settings that train alike are one network: digits' usual shift given, or its (never made) flips refused.
    ids = [n.network_id for n in plain]
    assert [n.network_id for n in networks(parse_spec({**aug, "training": {"augmentation_shift": 1}}))] == ids
    assert [n.network_id for n in networks(parse_spec({**aug, "training": {"augmentation_flips": False}}))] == ids
    cifar_aug = {**aug, "datasets": ["cifar10"]}
    cifar_ids = [n.network_id for n in networks(parse_spec(cifar_aug))]
    assert [n.network_id for n in networks(parse_spec({**cifar_aug, "training": {"augmentation_shift": 4}}))] == cifar_ids
    unflipped = networks(parse_spec({**cifar_aug, "training": {"augmentation_flips": False}}))
    assert sum(a.network_id != b for a, b in zip(unflipped, cifar_ids)) == len(cifar_ids) // 2
    shifted = networks(parse_spec({**aug, "training": {"augmentation_shift": 3}}))
    assert {n.row()["augmentation_shift"] for n in shifted if n.augmentation} == {3}
    bundles = expand(parse_spec({**aug, "training": {"augmentation_shift": 2}}))
    assert all(len({(m.augmentation, m.augmentation_shift) for m in b.members}) == 1 for b in bundles)
    with pytest.raises(SpecError, match=r"training.augmentation_shift: 0 leaves augmented networks unaugmented "
                                        r"\(digits's images are never flipped\); give a shift of 1 or more"):
        parse_spec({**aug, "training": {"augmentation_shift": 0}})
    cifar = {**aug, "datasets": ["cifar10"]}
    assert parse_spec({**cifar, "training": {"augmentation_shift": 0}}).training.augmentation_shift == 0
    with pytest.raises(SpecError, match=r"training.augmentation_shift: 0 leaves augmented networks unaugmented "
                                        r"\(augmentation_flips is false\)"):
        parse_spec({**cifar, "training": {"augmentation_shift": 0, "augmentation_flips": False}})
    with pytest.raises(SpecError, match=r"training.augmentation_shift: 8 pixels moves digits's 8-pixel images out "
                                        r"of view; use at most 7"):
        parse_spec({**aug, "training": {"augmentation_shift": 8}})
    with pytest.raises(SpecError, match=r"training.augmentation_shift: expected an integer ≥ 0 or null, got -1"):
        parse_spec({**aug, "training": {"augmentation_shift": -1}})
    # Nothing to check where no network is augmented.
    assert parse_spec({**VALID, "training": {"augmentation_shift": 0}}).training.augmentation_shift == 0


def test_a_batch_of_at_least_the_training_set_is_the_full_batch(tmp_path):
    # 128 of a 100-example training set is the full batch the trainer runs: the same networks, ids
    # and rows as null. Where a grid lists both, that data set's networks train once (said so),
    # and the whole set keeps both.
    sized = {**VALID, "datasets": [{"name": "digits", "train_size": 100}, "digits"]}
    asked = networks(parse_spec({**sized, "grid": {**VALID["grid"], "batch_sizes": [32, 128]}}))
    full = networks(parse_spec({**sized, "grid": {**VALID["grid"], "batch_sizes": [32, None]}}))
    small = [n for n in asked if n.dataset.train_size == 100]
    assert {n.batch_size for n in small} == {32, None}
    assert [n.network_id for n in small] == [n.network_id for n in full if n.dataset.train_size == 100]
    assert {n.row()["full_batch"] for n in small if n.batch_size is None} == {True}
    assert {n.batch_size for n in asked if n.dataset.train_size is None} == {32, 128}  # 1297 examples
    both = parse_spec({**sized, "grid": {**VALID["grid"], "batch_sizes": [32, 128, None]}})
    nets = networks(both)
    assert len({n.network_id for n in nets}) == len(nets)
    assert [n.network_id for n in nets if n.dataset.train_size == 100] == [n.network_id for n in small]
    assert {n.batch_size for n in nets if n.dataset.train_size is None} == {32, 128, None}
    note = ("grid.batch_sizes: 128 and full are each digits's full batch (100 training examples), so its networks "
            "train once at the full batch, not once for each")
    assert merged_batch_sizes(both) == [note] and merged_batch_sizes(parse_spec(sized)) == []
    assert f"note: {note}" in plan_summary(both, expand(both))
    # Points beyond a split are all of it: said once per data set, for the split that is short.
    scored = parse_spec({**sized, "scoring": {"points": 600, "train_points": 200}})
    note = "scoring.train_points: 200 is more than the 100 training points of digits, so all 100 are scored"
    assert points_notes(600, 200, [b.dataset for b in expand(scored)]) == [
        "scoring.points: 600 is more than the 500 test points of digits, so all 500 are scored", note]
    assert f"note: {note}" in plan_summary(scored, expand(scored))
    # An image folder's training examples are counted from its files.
    folder = tmp_path / "images"
    for split, count in (("train", 12), ("test", 4)):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True)
            for i in range(count // 2):
                Image.new("RGB", (8, 8)).save(folder / split / c / f"{i}.png")
    images = parse_spec({**VALID, "datasets": [{"name": "image_folder", "path": str(folder)}],
                         "grid": {**VALID["grid"], "batch_sizes": [4, 16, 32]}})
    assert {n.batch_size for n in networks(images)} == {4, None} and len(merged_batch_sizes(images)) == 1
