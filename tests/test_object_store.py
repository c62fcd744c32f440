"""Sweeps on an object store (README: `--storage s3://…`), against a local S3 server: moto's, run
as `python -m moto.server` in a process of its own on 127.0.0.1, so the test can pause it.

- `sweep run digits --storage s3://…`, then `sweep status` and `analysis.load` on the s3:// URI:
  the same tables as the same sweep on local disk.
- The server going away mid-run (SIGSTOP: it keeps its state but answers nothing, as an
  unreachable endpoint does) and coming back (SIGCONT); then `sweep resume`: the tables of an
  uninterrupted run, with no row lost or duplicated.

The sweeps reach the server through pyarrow's S3 file system, configured from the environment
(AWS_ENDPOINT_URL and test credentials) as a user's would be; every sweep process (and the Ray
workers its local Ray starts, which inherit its environment) gets it. Processes run in sessions
of their own and are ended by those sessions' process ids, never with `ray stop`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

pytest.importorskip("moto.server", reason="needs moto's S3 server: pip install 'moto[server]>=5' (the test extra)")

import analysis
from processes import Session, free_port, sweep_argv

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find a session's processes"),
]

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "sweep-tests"
RUN_TIMEOUT_S = 240
# Longer than the AWS SDK's give-up time for a request to a silent endpoint (3 s without a byte,
# three attempts), so requests during the outage fail rather than just wait.
OUTAGE_S = 15

# Three bundles of two networks trained in two slots, the full budget (no early stop), a
# checkpoint every 30 epochs: a run long enough to catch one bundle finished and another mid-way.
OUTAGE_SPEC = """
name: outage
datasets:
  - {name: digits, train_size: 300}
grid:
  widths: [8, 12, 16]
  depths: [1]
  activations: [relu]
  optimizers: [momentum]
  learning_rates: [0.05]
  batch_sizes: [10]
  seeds: [0, 1]
budget:
  max_epochs: 120
  stop_at_full_train_acc: false
checkpoints:
  every_epochs: 30
scoring:
  points: 50
  train_points: 30
  transitions_k: 16
resources:
  bundle_size: 2
  cpus_per_trial: 1
  scoring_actors: 1
  cpus_per_scoring_actor: 0
"""
OUTAGE_TAGS = ["end", "epoch-000030", "epoch-000060", "epoch-000090", "init"]
NETWORK_VALUES = ["train_loss", "train_acc", "test_loss", "test_acc", "gap", "loss_gap"]
SCORE_KEY = ["network_id", "checkpoint", "split", "metric"]
POINT_KEY = ["network_id", "checkpoint", "split", "point_index"]


# --- processes --------------------------------------------------------------------------------


def run_to_end(argv: list[str], log: Path, env: dict) -> tuple[int, str]:
    session = Session(argv, log, env)
    try:
        code = session.wait()
    finally:
        session.end()  # whatever of its local Ray outlived it
    return code, session.output()


# --- the S3 server ----------------------------------------------------------------------------


class ObjectStore:
    """moto's S3 server in a process of its own, with one bucket; `env` reaches it from pyarrow."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no credential look-ups on a metadata address
            # Nothing from the user's ~/.aws (a profile, another endpoint) takes part.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        self.session = Session([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                               log, dict(os.environ))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.session.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's server did not start:\n{self.session.output()[-3000:]}")
                time.sleep(0.1)
        pafs.S3FileSystem(endpoint_override=self.endpoint, access_key="testing", secret_key="testing",
                          region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)

    def pause(self) -> None:
        os.kill(self.session.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.session.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.resume()  # a stopped process would not act on the kill until continued
        self.session.end()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh S3 server; this process reaches it through the environment too (analysis.load)."""
    server = ObjectStore(tmp_path / "moto.log")
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    yield server
    server.close()


def sweep_env(store: ObjectStore | None = None) -> dict:
    """The sweep commands' environment: no Ray or AWS settings of the caller's, the server's."""
    values = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    values.update(RAY_USAGE_STATS_ENABLED="0", **(store.env if store else {}))
    return values


@pytest.fixture
def sweep_name():
    """A name of this test's own: with cloud storage, Ray's log is a local /tmp/sweep-<name>-<hash>.log."""
    name = f"s3-{secrets.token_hex(4)}"
    yield name
    for log in Path(tempfile.gettempdir()).glob(f"sweep-{name}-*.log"):
        log.unlink(missing_ok=True)


# --- what a sweep left on its storage, local or S3 alike -------------------------------------


def files(sweep_uri: str) -> list[str]:
    """Paths of every file under the sweep, relative to it."""
    fs, root = pafs.FileSystem.from_uri(sweep_uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(info.path[len(root) + 1:] for info in infos if info.type == pafs.FileType.File)


def checkpoint_tags(sweep_uri: str) -> dict[str, list[str]]:
    """Per bundle, the tags of its checkpoints on the storage (from their meta.json)."""
    fs, root = pafs.FileSystem.from_uri(sweep_uri)
    tags: dict[str, list[str]] = {}
    for path in files(sweep_uri):
        parts = path.split("/")
        if len(parts) == 3 and parts[0].startswith("bundle-") and parts[2] == "meta.json":
            with fs.open_input_stream(f"{root}/{path}") as stream:
                meta = json.loads(stream.read())
            tags.setdefault(meta["bundle_id"], []).append(meta["tag"])
    return {bundle: sorted(t) for bundle, t in tags.items()}


def without_meta(sweep_uri: str) -> list[str]:
    """Checkpoint folders (relative to the sweep) that hold files but no meta.json."""
    folders = {tuple(path.split("/")[:2]) for path in files(sweep_uri)
               if path.startswith("bundle-") and path.count("/") == 2}
    complete = {tuple(path.split("/")[:2]) for path in files(sweep_uri) if path.endswith("/meta.json")}
    return sorted("/".join(folder) for folder in folders - complete)


def table_keys(sweep_uri: str, table: str) -> set[str]:
    prefix = f"tables/{table}/"
    return {p[len(prefix):-len(".parquet")] for p in files(sweep_uri) if p.startswith(prefix) and p.endswith(".parquet")}


def as_str(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame.astype({column: str for column in columns})


def assert_same_tables(run: analysis.Tables, reference: analysis.Tables, networks: int) -> None:
    """Same networks, one row each, same final values; every score and point row once, as the
    reference's; the other tables as many rows per network and checkpoint."""
    nets = run.networks.set_index("network_id").sort_index()
    ref_nets = reference.networks.set_index("network_id").sort_index()
    assert nets.index.is_unique and len(nets) == networks
    assert list(nets.index) == list(ref_nets.index)
    assert (nets["status"].astype(str) == ref_nets["status"].astype(str)).all(), nets["message"].tolist()
    assert (nets[["bundle_id", "steps", "epochs"]] == ref_nets[["bundle_id", "steps", "epochs"]]).all().all()
    np.testing.assert_allclose(nets[NETWORK_VALUES], ref_nets[NETWORK_VALUES], rtol=1e-5, atol=1e-7)

    scores, ref_scores = as_str(run.scores, SCORE_KEY), as_str(reference.scores, SCORE_KEY)
    assert len(scores) > 0 and not scores.duplicated(SCORE_KEY).any()
    assert (scores["status"].astype(str) == "ok").all(), scores.loc[scores["status"] != "ok", "message"].unique()
    merged = ref_scores.merge(scores, on=SCORE_KEY, how="outer", suffixes=("_ref", ""), indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", SCORE_KEY]
    np.testing.assert_allclose(merged["mean"], merged["mean_ref"], rtol=1e-4, atol=1e-6)

    points, ref_points = as_str(run.points, POINT_KEY), as_str(reference.points, POINT_KEY)
    assert len(points) > 0 and not points.duplicated(POINT_KEY).any()
    merged = ref_points.merge(points, on=POINT_KEY, how="outer", suffixes=("_ref", ""), indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", POINT_KEY]
    np.testing.assert_allclose(merged["jacobian_softmax"], merged["jacobian_softmax_ref"], rtol=1e-4, atol=1e-6)

    for table in ("trajectories", "slices"):
        got, expected = getattr(run, table), getattr(reference, table)
        count = ["network_id", "checkpoint"]
        assert (as_str(got, count).groupby(count).size().sort_index()
                .equals(as_str(expected, count).groupby(count).size().sort_index())), table


# --- a sweep on S3 ----------------------------------------------------------------------------


def test_a_digits_sweep_on_s3_has_the_tables_of_one_on_local_disk(store, sweep_name, tmp_path):
    # 4 networks of the preset: one bundle, its init and end checkpoints, every table written.
    options = ["--max-networks", "4", "--name", sweep_name, "--no-report"]
    local_dir = tmp_path / "local"
    code, output = run_to_end(sweep_argv("run", "digits", "--storage", str(local_dir), *options),
                              tmp_path / "local.log", sweep_env())
    assert code == 0, output[-3000:]
    uri = f"s3://{BUCKET}/sweeps/{sweep_name}"
    code, output = run_to_end(sweep_argv("run", "digits", "--storage", f"s3://{BUCKET}/sweeps", *options),
                              tmp_path / "s3.log", sweep_env(store))
    assert code == 0, output[-3000:]
    assert f"-> {uri}" in output and "Traceback" not in output, output[-3000:]

    status = subprocess.run(sweep_argv("status", uri), check=False, capture_output=True, text=True,
                            env=sweep_env(store), cwd=ROOT, timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == [
        f"sweep {sweep_name} at {uri}",
        "  bundles: 1 of 1 finished",
        "  networks: 4 of 4 recorded, 4 converged, 0 budget, 0 diverged, 0 failed",
        "  checkpoints: 2 written, 2 scored",
        f"  tables: {uri}/tables",
    ]

    stored = files(uri)
    assert "sweep.json" in stored and "sweep.lock" not in stored  # released at the end
    local_uri = (local_dir / sweep_name).as_uri()
    tags = checkpoint_tags(uri)
    assert tags == checkpoint_tags(local_uri) and list(tags.values()) == [["end", "init"]]
    for table in ("networks", "scores", "points", "trajectories", "slices"):
        assert table_keys(uri, table) == table_keys(local_uri, table) != set(), table

    tables = analysis.load(uri)
    assert tables.path == uri + "/tables"
    assert len(tables.wide) == 4 and tables.wide["jacobian_softmax"].notna().all()
    assert_same_tables(tables, analysis.load(local_dir / sweep_name), networks=4)


# --- the server going away mid-run ------------------------------------------------------------


@pytest.fixture(scope="module")
def outage_reference(tmp_path_factory) -> Path:
    """The outage spec run uninterrupted on local disk."""
    root = tmp_path_factory.mktemp("outage-reference")
    spec = root / "outage.yaml"
    spec.write_text(OUTAGE_SPEC)
    code, output = run_to_end(sweep_argv("run", str(spec), "--storage", str(root), "--name", "ref", "--no-report"),
                              root / "run.log", sweep_env())
    assert code == 0, output[-3000:]
    return root / "ref"


def caught_mid_way(uri: str) -> bool:
    """A bundle has finished (its `networks` file is there) and another is training: it has a
    checkpoint past `init` and no `networks` file yet (written just before its `end`). From one
    listing, so a poll costs the server one request."""
    stored = files(uri)
    finished = {p[len("tables/networks/"):-len(".parquet")] for p in stored if p.startswith("tables/networks/")}
    checkpoints: dict[str, int] = {}
    for path in stored:
        parts = path.split("/")
        if len(parts) == 3 and parts[0].startswith("bundle-") and parts[2] == "meta.json":
            bundle = parts[0].removeprefix("bundle-")
            checkpoints[bundle] = checkpoints.get(bundle, 0) + 1
    return bool(finished) and any(n > 1 and b not in finished for b, n in checkpoints.items())


def outage_felt(driver: Session, sweep_name: str) -> bool:
    """Whether a storage call of the run has timed out: in its output or its Ray log."""
    felt = driver.output() + "".join(log.read_text(errors="replace")
                                     for log in Path(tempfile.gettempdir()).glob(f"sweep-{sweep_name}-*.log"))
    return "Timeout was reached" in felt or "AWS Error" in felt


def test_a_server_that_goes_away_mid_run_and_comes_back_costs_no_rows(store, sweep_name, outage_reference,
                                                                       tmp_path):
    spec = tmp_path / "outage.yaml"
    spec.write_text(OUTAGE_SPEC)
    uri = f"s3://{BUCKET}/sweeps/{sweep_name}"
    env = sweep_env(store)
    driver = Session(sweep_argv("run", str(spec), "--storage", f"s3://{BUCKET}/sweeps", "--name", sweep_name,
                                "--no-report"), tmp_path / "run.log", env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        caught = False
        while driver.proc.poll() is None and time.monotonic() < deadline and not caught:
            time.sleep(0.2)
            caught = caught_mid_way(uri)
        assert caught and driver.proc.poll() is None, \
            f"the sweep could not be caught mid-way:\n{driver.output()[-3000:]}"
        before = checkpoint_tags(uri)
        store.pause()
        try:  # OUTAGE_S at least, and until a storage call has timed out (later on a loaded machine)
            started = time.monotonic()
            while time.monotonic() - started < OUTAGE_S or (
                    not outage_felt(driver, sweep_name) and time.monotonic() - started < 120):
                time.sleep(0.5)
        finally:
            store.resume()
        # Back again, the run goes on by itself: bundles whose storage calls failed are retried or
        # recorded as failed (exit 1, pointing to `sweep resume`); it must not hang.
        code = driver.wait()
    finally:
        driver.end()
    output = driver.output()
    assert code in (0, 1), output[-3000:]
    # A failure is said with how to continue: bundles to `sweep resume`, checkpoints the storage
    # did not give to scoring (left unscored, never recorded as failed) to `sweep score`.
    assert code == 0 or f"retry them with: sweep resume {uri}" in output \
        or f"score them with: sweep score {uri}" in output, output[-3000:]
    # The outage was felt: some storage call of the run timed out while the server was stopped.
    assert outage_felt(driver, sweep_name), output[-3000:]
    # Nothing written before the outage was lost.
    after = checkpoint_tags(uri)
    assert all(set(tags) <= set(after.get(bundle, [])) for bundle, tags in before.items())

    code, output = run_to_end(sweep_argv("resume", uri, "--no-report"), tmp_path / "resume.log", env)
    assert "Traceback" not in output, output[-3000:]
    lost = without_meta(uri)
    if lost:
        # Seen once in CI: a checkpoint uploaded during the outage (Tune, through pyarrow's S3 file
        # system) kept its weights but not its meta.json (the multipart upload begun, never
        # completed), and no error reached the trial. The sweep must name it, not score it.
        assert code == 1, output[-3000:]
        assert all(f"{folder}/meta.json is missing: the checkpoint was not written completely" in output
                   for folder in lost), output[-3000:]
        pytest.xfail(f"the storage lost the meta.json of {lost} during the outage without an error (upstream)")
    assert code == 0, output[-3000:]

    # Every bundle wrote each checkpoint once, as the uninterrupted run did, and each is scored.
    reference_uri = outage_reference.as_uri()
    tags = checkpoint_tags(uri)
    assert tags == checkpoint_tags(reference_uri) and len(tags) == 3
    assert all(t == OUTAGE_TAGS for t in tags.values()), tags
    written = {f"{bundle}--{tag}" for bundle, t in tags.items() for tag in t}
    assert table_keys(uri, "scores") == table_keys(uri, "points") == written
    assert table_keys(uri, "networks") == set(tags)
    assert "sweep.lock" not in files(uri)
    assert_same_tables(analysis.load(uri), analysis.load(outage_reference), networks=6)
