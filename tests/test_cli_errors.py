"""The bad-input catalogue (docs/failures.md): every case exits non-zero with a message that
names the problem, before any Ray process starts, and never with a bare traceback."""

import signal
import time
from pathlib import Path

import pytest
from processes import run_cli
from specs import MINIMAL_SPEC as GOOD


def spec_file(tmp_path: Path, text: str, suffix: str = ".yaml") -> str:
    path = tmp_path / f"spec{suffix}"
    path.write_text(text)
    return str(path)


CASES = {
    "unknown preset": (["run", "no-such-preset"], "unknown preset"),
    "missing spec file": (["run", "/nonexistent/spec.yaml"], "not found"),
    "unknown top-level key": (GOOD + "colour: blue\n", "colour"),
    "unknown grid key": (GOOD.replace("depths: [1]", "depths: [1]\n  dropout: [0.5]"), "grid.dropout"),
    "wrong type": (GOOD.replace("widths: [8]", "widths: eight"), "grid.widths"),
    "empty grid": (GOOD.replace("widths: [8]", "widths: []"), "grid.widths"),
    "negative width": (GOOD.replace("widths: [8]", "widths: [-3]"), "grid.widths"),
    "negative train size": (GOOD.replace("datasets: [digits]", "datasets: [{name: digits, train_size: -5}]"),
                            "train_size"),
    "train size beyond the data set": (GOOD.replace("datasets: [digits]",
                                                    "datasets: [{name: digits, train_size: 99999}]"), "train_size"),
    "unknown data set": (GOOD.replace("datasets: [digits]", "datasets: [imagenet]"), "imagenet"),
    "unknown activation": (GOOD.replace("depths: [1]", "depths: [1]\n  activations: [swishy]"), "swishy"),
    "negative learning rate": (GOOD.replace("learning_rates: [0.1]", "learning_rates: [-0.1]"),
                               "learning_rates"),
    "zero epochs": (GOOD.replace("max_epochs: 2", "max_epochs: 0"), "budget.max_epochs"),
    "missing budget": (GOOD.replace("budget:\n  max_epochs: 2\n", ""), "budget"),
    "not YAML": ("name: [unclosed\n", "YAML"),
    "label noise above 1": (GOOD.replace("depths: [1]", "depths: [1]\n  random_label_fractions: [1.5]"),
                            "random_label_fractions"),
    "zero bundle size": (GOOD + "resources:\n  bundle_size: 0\n", "resources.bundle_size"),
    "GPUs on a machine without them": (GOOD + "resources:\n  gpus_per_trial: 1\n", "this machine has none"),
    "image_folder without a path": (GOOD.replace("datasets: [digits]", "datasets: [image_folder]"), "path"),
    "missing data set offline": (GOOD.replace("datasets: [digits]",
                                              "datasets: [{name: mnist, data_root: /nonexistent/data}]"),
                                 "download"),
    "one data set listed twice": (GOOD.replace("datasets: [digits]",
                                               "datasets: [digits, {name: digits, data_root: /elsewhere}]"),
                                  "datasets[1]: lists the same data twice"),
    "full batch written twice": (GOOD.replace("depths: [1]", "depths: [1]\n  batch_sizes: [full, null]"),
                                 'full batch (null and "full" are the same) is there twice'),
    "a split too small to score": (GOOD.replace("datasets: [digits]", "datasets: [{name: digits, test_size: 2}]"),
                                   "test_size: at least 3"),
    "storage pyarrow cannot open": (GOOD + "storage: s3a://bucket/sweeps\n", "pyarrow cannot open s3a://"),
    "--gpu-memory not a card's": (["run", "paper-capacity", "--dry-run", "--gpu-memory", "inf"],
                                  "--gpu-memory must be a card's memory"),
    "a trial asking more cores than the machine has": (GOOD + "resources:\n  cpus_per_trial: 4096\n",
                                                       "resources.cpus_per_trial: 4096"),
    "a bundle beyond the machine's memory": (GOOD.replace("widths: [8]", "widths: [1000000000]"),
                                             "more than this machine's"),
}


# What the machine lacks stops a real run (before Ray starts) but not a dry run, which plans anyway.
MACHINE_CASES = ("GPUs on a machine without them", "missing data set offline",
                 "a trial asking more cores than the machine has", "a bundle beyond the machine's memory")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_is_refused_with_a_message(case, tmp_path, capsys):
    source, expected = CASES[case]
    dry = [] if case in MACHINE_CASES else ["--dry-run"]
    argv = source if isinstance(source, list) else ["run", spec_file(tmp_path, source), *dry]
    code, text = run_cli(capsys, *argv)
    assert code == 2, text
    assert expected.lower() in text.lower(), text
    assert "Traceback" not in text


@pytest.mark.parametrize("case", MACHINE_CASES)
def test_dry_run_plans_without_the_data_or_the_gpus_and_says_a_run_would_stop(case, tmp_path, capsys):
    source, expected = CASES[case]
    code, text = run_cli(capsys, "run", spec_file(tmp_path, source), "--dry-run")
    assert code == 0, text
    assert "1 networks" in text and "projected time" in text
    assert "a real run would stop here" in text and expected.lower() in text.lower()


def test_toml_spec_with_wrong_type(tmp_path, capsys):
    toml = 'name = "t"\ndatasets = ["digits"]\n[grid]\nwidths = ["x"]\ndepths = [1]\nlearning_rates = [0.1]\n' \
           '[budget]\nmax_epochs = 1\n'
    code, text = run_cli(capsys, "run", spec_file(tmp_path, toml, ".toml"), "--dry-run")
    assert code == 2 and "grid.widths" in text


def test_grid_beyond_the_limit(tmp_path, capsys):
    huge = GOOD.replace("widths: [8]", f"widths: {list(range(1, 2001))}").replace(
        "learning_rates: [0.1]", f"learning_rates: {[0.001 * i for i in range(1, 101)]}")
    code, text = run_cli(capsys, "run", spec_file(tmp_path, huge), "--dry-run")
    assert code == 2 and "networks" in text and "limit" in text


def test_max_networks_must_be_positive(tmp_path, capsys):
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), "--max-networks", "0", "--dry-run")
    assert code == 2 and "--max-networks" in text


def test_storage_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), "--storage", blocker / "sub")
    assert code == 2 and "not writable" in text
    # a dry run writes nothing, and says what the real run would refuse
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), "--storage", blocker / "sub", "--dry-run")
    assert code == 0 and f"a real run would stop here: storage {blocker / 'sub'} is not writable" in text, text
    assert blocker.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["file", "spec.yaml"]


@pytest.mark.parametrize("command", ["status", "resume", "score", "report"])
def test_commands_on_a_folder_that_is_not_a_sweep(command, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, text = run_cli(capsys, command, tmp_path)
    assert code == 2, text
    assert str(tmp_path) in text and "Traceback" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written into it


@pytest.mark.parametrize("command", ["status", "resume", "score", "report"])
def test_commands_on_a_folder_whose_plan_is_damaged(command, tmp_path, capsys):
    (tmp_path / "sweep.json").write_text('{"name": ')
    code, text = run_cli(capsys, command, tmp_path)
    assert code == 2 and f"{tmp_path}/sweep.json is damaged (JSONDecodeError" in text, text
    assert "Traceback" not in text


def test_storage_schemes_pyarrow_knows_beyond_the_usual_are_taken(tmp_path, capsys):
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), "--storage", f"local://{tmp_path}/store",
                         "--dry-run")
    assert code == 0, text


@pytest.mark.parametrize("command", ["status", "resume", "score", "report"])
def test_commands_on_a_uri_that_no_file_system_opens(command, capsys):
    code, text = run_cli(capsys, command, "s3a://bucket/sweeps/digits-20261206-120000")
    assert code == 2 and "pyarrow cannot open s3a://" in text and "s3://" in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "", "x" * 101, "two words", "naïve",
                                  "semi;colon", "tab\tname"])
def test_a_sweep_name_that_is_not_a_folder_name_is_refused_with_the_rule(name, tmp_path, capsys):
    storage = tmp_path / "store"
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), "--storage", storage, f"--name={name}")
    assert code == 2 and "is not a sweep name" in text and "not starting with '.'" in text, text
    assert not storage.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("name", ["a", "digits-2026.12.04_run-1", "x" * 100, "-dash", "_under"])
def test_sweep_names_by_the_rule_are_taken(name, tmp_path, capsys):
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), f"--name={name}", "--dry-run")
    assert code == 0, text


def test_a_spec_name_that_is_not_a_folder_name_is_refused(tmp_path, capsys):
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD.replace("name: ok", "name: ../up")))
    assert code == 2 and "name: '../up' is not a sweep name" in text, text
    long = "n" * 85  # the default sweep name adds 16 characters of date
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD.replace("name: ok", f"name: {long}")))
    assert code == 2 and "at most 84" in text, text


def test_dry_run_prints_the_plan(tmp_path, capsys):
    code, text = run_cli(capsys, "run", spec_file(tmp_path, GOOD), "--dry-run")
    assert code == 0 and "1 networks" in text


def test_presets_are_listed(capsys):
    code, text = run_cli(capsys, "presets")
    assert code == 0
    for name in ("digits", "paper-trajectories", "paper-capacity", "paper-factors", "paper-datasets"):
        assert name in text


def test_python_dash_m_sweep_is_the_command(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sweep", "run", spec_file(tmp_path, GOOD), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 networks" in done.stdout, done.stderr
    bad = subprocess.run([sys.executable, "-m", "sweep", "run", "no-such-preset"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "unknown preset" in bad.stderr


def test_ctrl_c_while_the_command_loads_ends_quietly(tmp_path):
    # The signal lands while the command's modules are still being imported (pandas is in, the
    # rest is not): a message and 130, as later, not a traceback of the import.
    import os
    import signal
    import subprocess
    import sys

    spec = spec_file(tmp_path, GOOD)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", spec, "--storage", str(tmp_path / "store")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        maps = Path(f"/proc/{proc.pid}/maps")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and "pandas/_libs" not in maps.read_text():
            time.sleep(0.002)
        loading = not (tmp_path / "store").exists()  # nothing started yet: still loading
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        if loading:
            break
    assert loading, "the sweep had started before the signal could be sent"
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "sweep: interrupted" in err and not (tmp_path / "store").exists()


SIGNAL_AT_EXIT = """
import atexit, os, signal, sys
from sweep.command.entry import main
atexit.register(lambda: os.kill(os.getpid(), int(sys.argv[1])))  # as the local Ray's shutdown runs at exit
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("argv, code", [(["presets"], None), (["status", "/nonexistent/sweep"], 2)])
def test_a_signal_while_the_process_exits_ends_it_with_the_commands_status(signum, argv, code):
    # Seen after an interrupted run: a second Ctrl-C while the process exited ended it by the
    # signal's default action, not with the command's status (130, here 2), or 128 + the signal.
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGNAL_AT_EXIT, str(int(signum)), *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == (code or 128 + signum) and "Traceback" not in done.stderr, done.stderr
    plain = subprocess.run([sys.executable, "-m", "sweep", *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout == plain.stdout  # its output whole, though the exit skipped Python's own flush


SWALLOWING_IMPORT = """
import builtins, signal, sys
real_import = builtins.__import__

def swallowing_import(name, *args, **kwargs):
    if name == sys.argv[1] and not getattr(builtins, "fired", False):
        builtins.fired = True
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C as this import begins...
        except KeyboardInterrupt:
            pass  # ...and its exception lost inside it, as CPython's import machinery can
    return real_import(name, *args, **kwargs)

builtins.__import__ = swallowing_import
from sweep.command.entry import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module, started", [("pandas", False), ("ray", True)])
def test_ctrl_c_lost_inside_an_import_still_stops_the_command(tmp_path, module, started):
    # Seen in CI: the signal's KeyboardInterrupt vanished inside an import and `sweep run` ran its
    # whole sweep and exited 0. The stop is recorded too, and looked at once the command has
    # loaded (pandas: nothing started) and before Ray starts (ray: imported after the sweep's
    # folder is made).
    import os
    import subprocess
    import sys

    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", SWALLOWING_IMPORT, module, "run", spec_file(tmp_path, GOOD),
                           "--storage", str(store)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    if started:
        assert "sweep: interrupted (SIGINT): 0 of 1 bundle(s) finished training" in proc.stderr, proc.stderr
        assert "sweep: continue with: sweep resume" in proc.stderr
        assert not list(store.glob("*/tables/networks/*.parquet"))
    else:
        assert proc.stderr == "sweep: interrupted while starting; nothing was done\n" and not store.exists()


def _alias_bomb(where: str) -> str:
    """Nine levels of nine aliases (9⁹ strings if expanded), placed where the spec parser looks."""
    items = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, key in zip("abcdefgh", "bcdefghi"):
        items.append(f"&{key} [" + ",".join([f"*{prev}"] * 9) + "]")
    return GOOD.replace("widths: [8]", f"widths: [{', '.join(items)}]") if where == "grid" else \
        GOOD.replace("name: ok", f"name: [{', '.join(items)}]")


FILES = {  # file name: (content, what the message says)
    "binary.yaml": (bytes(range(256)), "binary data"),
    "latin1.yaml": (GOOD.replace("name: ok", "name: café").encode("latin-1"), "not UTF-8 text"),
    "empty.yaml": (b"", "the spec is empty"),
    "comments-only.yaml": (b"# nothing yet\n", "the spec is empty"),
    "huge.yaml": (b"#" * (2 << 20), "at most 1,048,576 bytes"),
    "deep.yaml": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep-map.yaml": (b"name: ok\nx: " + b"{k: " * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    "bomb-grid.yaml": (_alias_bomb("grid").encode(), "grid.widths[0]: expected a positive integer"),
    "bomb-name.yaml": (_alias_bomb("name").encode(), "name: expected a non-empty string"),
    "duplicate-key.yaml": (GOOD.replace("name: ok", "name: ok\nname: other").encode(), "key 'name' appears twice"),
    "duplicate-nested.yaml": (GOOD.replace("depths: [1]", "depths: [1]\n  depths: [2]").encode(),
                              "key 'depths' appears twice"),
    "python-tag.yaml": (GOOD.replace("name: ok", "name: !!python/object/apply:os.system [ls]").encode(),
                        "could not determine a constructor"),
    "custom-tag.yaml": (GOOD.replace("name: ok", "name: !secret ok").encode(), "could not determine a constructor"),
    "bad.toml": (b"name = \n", "not valid TOML"),
    "yaml-inside.toml": (b"name: ok\ndatasets: [digits]\n", "reads as YAML, not TOML"),
    "toml-with-comments.yaml": (b'# my sweep\nname = "ok"\n\n[grid]\nwidths = [8]\n', "reads as TOML, not YAML"),
    "toml-inside.yaml": (b'name = "ok"\n[[datasets]]\nname = "digits"\n', "reads as TOML, not YAML"),
    "binary.toml": (b"\x00\x01name = 'x'", "binary data"),
}


@pytest.mark.parametrize("name", list(FILES))
def test_a_spec_file_of_any_content_gets_a_clean_message_quickly(name, tmp_path, capsys):
    content, expected = FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    started = time.process_time()  # CPU time: a bomb's cost, whatever else loads the machine
    code, text = run_cli(capsys, "run", path, "--dry-run")
    assert code == 2 and expected in text and "Traceback" not in text, text[:2000]
    assert str(path) in text and len(text) < 2000  # named, and never an expanded bomb
    assert time.process_time() - started < 10
