"""Bad input beyond the spec catalogue of test_cli_errors.py (docs/failures.md): cluster addresses
that answer nothing, and the safe-loading rules. Commands run as subprocesses, so the answer
comes from the `sweep` command as a user sees it, and a Ray that this test session may have
started is never reused."""

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from specs import MINIMAL_SPEC as SPEC

from sweep.plan import sweep_plan
from sweep.plan.planner import expand
from sweep.plan.spec import load_spec
from sweep.scoring.settings import METRICS

ROOT = Path(__file__).resolve().parents[1]
# ray.init on such an address retries for minutes; the command must answer well within this.
ANSWER_WITHIN_S = 60


def dead_address() -> str:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def sweep(*args: str, **env: str) -> tuple[int, str, float]:
    values = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    values.update(RAY_USAGE_STATS_ENABLED="0", **env)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True,
                          env=values, cwd=ROOT, timeout=300)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def sweep_folder(tmp_path, spec_file) -> Path:
    """A sweep folder as `sweep run` leaves it before Ray starts: only its plan."""
    spec = load_spec(str(spec_file))
    plan = sweep_plan.make_plan(spec, expand(spec), name="planned", storage=str(tmp_path), spec_source=str(spec_file),
                            spec_text=SPEC, spec_suffix=".yaml")
    sweep_plan.save_plan(plan)
    return Path(plan.sweep_dir)


def assert_refused(code: int, text: str, seconds: float, *needles: str) -> None:
    assert code == 2, text
    assert "Traceback" not in text, text
    assert seconds < ANSWER_WITHIN_S, f"took {seconds:.0f}s"
    for needle in needles:
        assert needle in text, text


def test_run_on_an_unreachable_address(tmp_path, spec_file):
    address = dead_address()
    code, text, seconds = sweep("run", str(spec_file), "--storage", str(tmp_path), "--address", address)
    assert_refused(code, text, seconds, "nothing answers at --address " + address, "ray start --head")
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]  # refused before anything was written


def test_run_on_an_address_where_something_else_listens(tmp_path, spec_file):
    # The dashboard's port given for the GCS's, say: ray.init would retry for minutes, past Ctrl-C.
    import threading

    server = socket.create_server(("", 0))  # on every interface, as a service there would be
    accepted = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in range(1000)), daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        code, text, seconds = sweep("run", str(spec_file), "--storage", str(tmp_path), "--address", address)
    finally:
        server.close()
    assert_refused(code, text, seconds, f"something listens at --address {address}", "does not answer as a Ray "
                   "cluster", "not the dashboard's (8265)")
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]  # refused before anything was written


def test_a_run_whose_ray_cannot_start_leaves_its_name_free(tmp_path, spec_file, monkeypatch, capsys):
    # The plan is written before Ray starts (a sweep stopped then resumes from it); a Ray that
    # cannot start (refused credentials, a version mismatch) must not leave the name taken.
    from sweep.command import cli

    def refused(address, log_file=None):
        raise cli.UsageError("could not connect to Ray at a local Ray instance: refused")

    monkeypatch.setattr(cli, "start_ray", refused)
    for _ in range(2):
        assert cli.main(["run", str(spec_file), "--storage", str(tmp_path), "--name", "again"]) == 2
        assert "could not connect to Ray" in capsys.readouterr().err
        assert not (tmp_path / "again" / "sweep.json").exists()


def test_new_scoring_settings_are_not_kept_when_ray_cannot_start(sweep_folder, monkeypatch, capsys):
    # They are saved before Ray starts (a rescore stopped then is taken up with them); a Ray that
    # cannot start leaves sweep.json as it was, so that nothing looks scored with other settings.
    from sweep.command import cli, interrupts

    def refused(address, log_file=None):
        raise cli.UsageError("could not connect to Ray at a local Ray instance: refused")

    monkeypatch.setattr(cli, "start_ray", refused)
    before = (sweep_folder / "sweep.json").read_bytes()
    assert cli.main(["score", str(sweep_folder), "--points", "7"]) == 2
    assert "could not connect to Ray" in capsys.readouterr().err
    assert (sweep_folder / "sweep.json").read_bytes() == before

    # Stopped while Ray starts, they are there already, and a plain `sweep score` goes on with them.
    def stopped(address, log_file=None):
        saved = json.loads((sweep_folder / "sweep.json").read_text())
        assert saved["scoring"]["points"] == 7 and saved["unrecorded_scoring"] == json.loads(before)["scoring"]
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli, "start_ray", stopped)
    assert cli.main(["score", str(sweep_folder), "--points", "7", "--metrics", "loss", "accuracy"]) == 130
    assert f"sweep: continue with: sweep score {sweep_folder}\n" in capsys.readouterr().err
    saved = json.loads((sweep_folder / "sweep.json").read_text())["scoring"]
    assert saved["points"] == saved["train_points"] == 7 and saved["metrics"] == ["loss", "accuracy"]
    # `--metrics all` is every metric; `--points` leaves a sweep without train points without them
    (sweep_folder / "sweep.json").write_text(json.dumps({**json.loads(before), "scoring": {
        **json.loads(before)["scoring"], "train_points": 0, "metrics": ["loss"]}}))
    monkeypatch.setattr(cli, "start_ray", lambda address, log_file=None: os.kill(os.getpid(), signal.SIGINT))
    assert cli.main(["score", str(sweep_folder), "--points", "9", "--metrics", "all"]) == 130
    assert interrupts.requested() is None  # this process's next command, or scoring pool, is not stopped
    saved = json.loads((sweep_folder / "sweep.json").read_text())["scoring"]
    assert saved["metrics"] == list(METRICS) and saved["points"] == 9 and saved["train_points"] == 0


def test_auto_address_from_the_environment_that_answers_nothing(tmp_path, spec_file):
    address = dead_address()
    code, text, seconds = sweep("run", str(spec_file), "--storage", str(tmp_path), "--address", "auto",
                                RAY_ADDRESS=address)
    assert_refused(code, text, seconds, "nothing answers at --address auto")


def test_an_address_that_is_not_host_and_port(tmp_path, spec_file):
    code, text, seconds = sweep("run", str(spec_file), "--storage", str(tmp_path), "--address", "headnode")
    assert_refused(code, text, seconds, "--address headnode")


@pytest.mark.parametrize("command", ["resume", "score"])
def test_resume_and_score_on_an_unreachable_address(command, sweep_folder):
    address = dead_address()
    code, text, seconds = sweep(command, str(sweep_folder), "--address", address)
    assert_refused(code, text, seconds, "nothing answers at --address " + address)


def test_a_report_of_a_sweep_that_finished_no_bundle_says_so(sweep_folder):
    # Stopped before any bundle ended (Ctrl-C early): the path is right, the report has nothing yet.
    code, text, seconds = sweep("report", str(sweep_folder))
    assert_refused(code, text, seconds, f"no bundle of {sweep_folder} has finished training yet",
                   f"sweep resume {sweep_folder}")


def test_a_bad_scoring_flag_is_named_as_the_flag(sweep_folder):
    before = (sweep_folder / "sweep.json").read_bytes()
    code, text, seconds = sweep("score", str(sweep_folder), "--metrics", "loss", "jacobain_softmax")
    assert_refused(code, text, seconds, "--metrics: scoring.metrics[1]: unknown value 'jacobain_softmax'")
    code, text, seconds = sweep("score", str(sweep_folder), "--points", "0")
    assert_refused(code, text, seconds, "--points: scoring.points: expected a positive integer, got 0")
    assert (sweep_folder / "sweep.json").read_bytes() == before  # its settings untouched


def test_a_sweep_folder_on_unreachable_storage():
    # No credentials and no network are needed to be told so: the bucket's region cannot be found.
    code, text, seconds = sweep("status", "s3://sensitivity-sweep-no-such-bucket.invalid/sweeps/x",
                                AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    assert_refused(code, text, seconds, "sweep.json")


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_sweep_folder_whose_bucket_cannot_be_found(command):
    # Without an endpoint, opening an s3:// URI first asks AWS for the bucket's region: offline
    # that fails ("cannot reach the storage of …"); online the read of sweep.json does.
    uri = "s3://sensitivity-sweep-no-such-bucket.invalid/sweeps/x"
    code, text, seconds = sweep(command, uri, AWS_EC2_METADATA_DISABLED="true")
    assert_refused(code, text, seconds, uri)
    assert "cannot reach the storage of" in text or "cannot read" in text, text


def test_gcs_calls_give_up_within_seconds_unless_the_uri_says_otherwise():
    # pyarrow's default retries a GCS call for 15 minutes: a machine without network or
    # credentials would wait that long in silence.
    from datetime import timedelta

    from sweep.plan import storage

    def limit(uri):
        fs, path = storage.resolve(uri)
        assert path == "bucket/sweeps/x"
        return fs.__reduce__()[1][0]["retry_time_limit"]  # the options the file system was made with

    assert limit("gs://bucket/sweeps/x") == timedelta(seconds=storage.GCS_RETRY_LIMIT_S)
    assert limit("gs://bucket/sweeps/x?retry_limit_seconds=300") == timedelta(seconds=300)
    assert limit("gs://bucket/sweeps/x?scheme=http") == timedelta(seconds=storage.GCS_RETRY_LIMIT_S)


def calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == function and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def test_checkpoints_and_specs_are_loaded_safely():
    sources = [p for package in ("sweep", "metrics_core", "analysis") for p in (ROOT / package).rglob("*.py")]
    loads = 0
    for path in sources:
        tree = ast.parse(path.read_text())
        for call in calls(tree, "torch", "load"):
            loads += 1
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{path.name}:{call.lineno}: torch.load without weights_only=True"
        for name in ("load", "load_all", "unsafe_load", "full_load"):
            assert not calls(tree, "yaml", name), f"{path.name}: yaml.{name}; use yaml.safe_load"
    assert loads >= 2  # the trainable's resume and the scorer
    import yaml

    from sweep.plan import spec

    assert issubclass(spec._SpecLoader, yaml.SafeLoader)  # the spec's loader (duplicate keys refused)


@pytest.mark.parametrize("args", [["presets"], ["schema"], ["run", "paper-capacity", "--dry-run"]],
                         ids=["presets", "schema", "dry-run"])
def test_output_into_a_pipe_its_reader_closed_ends_quietly(args):
    # `sweep presets | head -1`: the reader left; here before the first line, so every write meets it.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "sweep", *args], stdout=write, stderr=subprocess.PIPE,
                              cwd=ROOT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, timeout=120)
    finally:
        os.close(write)
    errors = done.stderr.decode()
    assert done.returncode == 128 + 13 and "Traceback" not in errors, errors  # 141, as for a program SIGPIPE ended


def test_analysis_of_a_sweep_whose_bucket_cannot_be_found():
    # As `sweep report`: offline the bucket's region cannot be found; online its folder does not exist.
    uri = "s3://sensitivity-sweep-no-such-bucket.invalid/sweeps/x"
    values = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "analysis", uri], capture_output=True, text=True, cwd=ROOT,
                          env={**values, "AWS_EC2_METADATA_DISABLED": "true"}, timeout=300)
    text = done.stdout + done.stderr
    assert_refused(done.returncode, text, time.monotonic() - started, uri)
    assert f"cannot reach the storage of {uri}" in text or "does not exist" in text, text
