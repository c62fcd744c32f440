"""Property-based tests (hypothesis): any spec document and any command line ends in a valid plan
or a clean error (exit 2, or argparse's usage error), never a traceback, and never changes an
existing sweep's tables."""

import hashlib
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from specs import MINIMAL_SPEC

from analysis.synthetic import SyntheticSweep, write_synthetic_sweep
from sweep.command import locks
from sweep.plan import sweep_plan
from sweep.plan import planner
from sweep.command.cli import main
from sweep.plan.spec import SpecError, load_spec, parse_spec

KEYS = {
    "": ["name", "description", "datasets", "grid", "budget", "checkpoints", "scoring", "training", "storage",
         "resources"],
    "grid": ["widths", "depths", "activations", "optimizers", "learning_rates", "batch_sizes",
             "random_label_fractions", "augmentation", "seeds", "inits"],
    "budget": ["max_epochs", "max_steps", "stop_at_full_train_acc"],
    "checkpoints": ["every_epochs"],
    "scoring": ["metrics", "points", "train_points", "transitions_k", "ellipses_per_kind", "profile_points",
                "slice_count", "seed", "chunk_size", "sharpness_samples"],
    "training": ["precision"],
    "resources": ["bundle_size", "cpus_per_trial", "gpus_per_trial", "scoring_actors", "cpus_per_scoring_actor",
                  "gpus_per_scoring_actor", "max_concurrent_trials", "gpu_memory_gib"],
}
WORDS = ["digits", "mnist", "cifar10", "image_folder", "relu", "tanh", "hard_tanh", "sgd", "momentum", "adam",
         "rmsprop", "auto", "fp32", "tf32", "bf16", "torch_default", "jacobian_softmax", "transitions", "../x", "",
         "a b", "ok"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3000), st.sampled_from([0.0, -0.1, 0.003, 0.5, 1.0, 2.5, math.nan,
                                                                       math.inf, 1e300]),
    st.sampled_from(WORDS), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(WORDS), inner, max_size=3)),
                      max_leaves=8)


def some(values_: list, most: int = 3):
    return st.lists(st.sampled_from(values_), min_size=1, max_size=most, unique=True)


SENSIBLE = {  # values a user would plausibly write, so that many documents are plans
    "name": st.sampled_from(["ok", "a-b_c.d"]),
    "datasets": st.sampled_from([["digits"], [{"name": "digits", "train_size": 200}], ["mnist"], ["cifar10"]]),
    "widths": some([4, 8, 16, 64, 512]), "depths": some([1, 2, 3, 5]),
    "activations": some(["relu", "tanh", "hard_tanh", "relu6", "leaky_relu"]),
    "optimizers": some(["sgd", "momentum", "adam", "rmsprop"], 2),
    "learning_rates": st.one_of(some([0.001, 0.01, 0.1]), st.just({"sgd": [0.1], "momentum": [0.01]})),
    "batch_sizes": some([32, 64, None], 2), "random_label_fractions": some([0.0, 0.2, 0.5], 2),
    "augmentation": some([False, True], 2), "seeds": some([0, 1, 2, 7]), "inits": st.just(["torch_default"]),
    "max_epochs": st.integers(1, 20), "max_steps": st.sampled_from([None, 50]), "stop_at_full_train_acc": st.booleans(),
    "every_epochs": st.integers(1, 5), "points": st.integers(10, 200), "train_points": st.integers(10, 200),
    "transitions_k": st.sampled_from([16, 64]), "profile_points": st.sampled_from([30, 258]),
    "precision": st.sampled_from(["fp32", "tf32", "bf16"]), "bundle_size": st.sampled_from(["auto", 1, 8]),
    "cpus_per_trial": st.sampled_from([0.5, 1, 2]), "gpus_per_trial": st.sampled_from([0, "auto", 0.25]),
    "scoring_actors": st.sampled_from(["auto", 0, 1]), "gpus_per_scoring_actor": st.sampled_from([0, "auto"]),
    "gpu_memory_gib": st.sampled_from([None, 8, 80]),
}


@st.composite
def documents(draw):
    """The minimal spec with keys set (mostly to plausible values, else to anything), replaced or
    removed at random, sections included."""
    doc = yaml.safe_load(MINIMAL_SPEC)
    for _ in range(draw(st.integers(1, 5))):
        section = draw(st.sampled_from(list(KEYS)))
        key = draw(st.one_of(st.sampled_from(KEYS[section]), st.sampled_from(WORDS)))
        target = doc if section == "" else doc.setdefault(section, {})
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["sensible", "sensible", "sensible", "anything", "drop"]))
        if action == "drop":
            target.pop(key, None)
        elif action == "sensible" and key in SENSIBLE:
            target[key] = draw(SENSIBLE[key])
        else:
            target[key] = draw(values)
    return doc


@settings(max_examples=600, deadline=None)
@given(documents())
def test_any_spec_document_is_a_plan_or_a_spec_error(doc):
    try:
        spec = parse_spec(doc)
    except SpecError as exc:
        event("spec error")
        assert str(exc) and len(str(exc)) < 2000
        return
    try:
        bundles = planner.expand(spec, planner.card_for(spec, assume=True))
    except SpecError as exc:
        event("refused by the planner")
        assert str(exc)
        return
    event("a plan")
    assert sum(len(b.members) for b in bundles) == spec.grid.size() * len(spec.datasets)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)), st.sampled_from([".yaml", ".toml"]))
def test_any_spec_file_is_loaded_or_refused_cleanly(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("spec") / f"spec{suffix}"
    path.write_bytes(content)
    try:
        load_spec(path)
    except SpecError as exc:
        assert str(path) in str(exc)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths a command line may name: an existing sweep (its tables written, its lock held by
    this test, as while another command works on it), an empty folder, a spec file, a binary file."""
    root = tmp_path_factory.mktemp("fuzz")
    spec = parse_spec(yaml.safe_load(MINIMAL_SPEC))
    plan = sweep_plan.make_plan(spec, planner.expand(spec), name="existing", storage=str(root), spec_source="-",
                            spec_text=MINIMAL_SPEC, spec_suffix=".yaml")
    sweep_plan.save_plan(plan)
    write_synthetic_sweep(plan.sweep_dir, SyntheticSweep(n_networks=16, points_per_network=10, k=9, grid=8))
    (root / "empty").mkdir()
    (root / "spec.yaml").write_text(MINIMAL_SPEC)
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    with locks.holding(plan.sweep_dir, "run"):
        yield root, Path(plan.sweep_dir)


def tables_digest(sweep_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((sweep_dir / "tables").rglob("*")):
        digest.update(str(path).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


OPTIONS = ["--storage", "--name", "--address", "--max-networks", "--gpu-memory", "--metrics", "--points", "--rescore",
           "--no-bootstrap", "--include-unconverged", "--no-score", "--no-report", "--verbose", "--dry-run", "-h"]


@st.composite
def command_lines(draw, root: Path, existing: Path):
    paths = [str(existing), str(root / "empty"), str(root / "spec.yaml"), str(root / "binary.yaml"),
             str(root / "nowhere"), "digits", "paper-factors", "no-such-preset", str(root)]
    word = st.one_of(st.sampled_from(paths), st.sampled_from(["-1", "0", "3", "1e9", "nan", "auto", "../x", "",
                                                              "jacobian_softmax", "loss"]), st.text(max_size=10))
    command = draw(st.sampled_from(["run", "run", "resume", "status", "score", "report", "presets", "bogus"]))
    argv = [command]
    for _ in range(draw(st.integers(0, 5))):
        argv += draw(st.one_of(st.tuples(st.sampled_from(OPTIONS)), st.tuples(st.sampled_from(OPTIONS), word),
                               st.tuples(word)))
    if command == "run":
        argv.append("--dry-run")  # a plan; a sweep that trains is not what fuzzing is for
    return [str(a) for a in argv]


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_command_line_is_a_plan_or_a_clean_error_and_leaves_a_sweep_alone(world, capsys, data):
    root, existing = world
    before = tables_digest(existing)
    argv = data.draw(command_lines(root, existing))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        code = exc.code
    event(f"{argv[0]}: exit {code}")
    text = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code)
    assert "Traceback" not in text.err + text.out, argv
    assert tables_digest(existing) == before, argv
