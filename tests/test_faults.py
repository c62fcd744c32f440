"""Cluster operation and faults (docs/failures.md), on real Ray clusters of this machine.

- The README's multi-machine path: `ray start --head`, `ray start --address`, then
  `sweep run --address host:port`. Its tables are the reference every other run must equal.
- A `ray.cluster_utils.Cluster` (a head without CPUs, two worker nodes): trials spread over
  the workers; the worker holding a checkpointed trial (and the scoring actor) is removed
  without warning; the trial continues from its last checkpoint on the other node.
- The driver killed with SIGKILL mid-sweep, then `sweep resume`.
- A finished sweep's folder damaged: a truncated Parquet file, a corrupted checkpoint.

Every process a test starts runs in its own session (start_new_session) and is ended by that
session's id, never with `ray stop`. The Cluster lives in a subprocess too (this file run as a
script), so the pytest process's own Ray, if any, is never touched.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from processes import RUN_TIMEOUT_S, Session, free_port, sweep_argv

from sweep.plan import storage
from sweep.training.trainable import finished_meta

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find a session's processes"),
]

# Four bundles of four networks; no early stop, so every bundle trains 40 epochs (long enough to
# kill something mid-bundle) and writes the same five checkpoints: init, epochs 10/20/30, end.
SPEC = """
name: faults
datasets:
  - {name: digits, train_size: 300}
grid:
  widths: [8, 12, 16, 20]
  depths: [1]
  activations: [relu]
  optimizers: [momentum]
  learning_rates: [0.02, 0.05]
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
  bundle_size: 4
  cpus_per_trial: 1
  scoring_actors: 1
  cpus_per_scoring_actor: {scorer_cpus}
"""
TAGS = ["end", "epoch-000030", "epoch-000060", "epoch-000090", "init"]
NETWORK_VALUES = ["train_loss", "train_acc", "test_loss", "test_acc", "gap", "loss_gap"]


# --- processes --------------------------------------------------------------------------------


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of `pid`; a Ray worker's command line is its title."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == pid and stat[0] != "Z":
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def env() -> dict:
    """Token authentication on, with a token of this module's own: every Ray process started here
    (and only those) shares it, as README's cluster section says to do."""
    values = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    values.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    return values


@pytest.fixture(scope="module")
def short_tmp():
    """Ray's session folders hold unix sockets, whose paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_spec(folder: Path, scorer_cpus: float = 0.0) -> Path:
    path = folder / "faults.yaml"
    path.write_text(SPEC.replace("{scorer_cpus}", str(scorer_cpus)))
    return path


# --- storage ----------------------------------------------------------------------------------


def checkpoint_metas(sweep_dir: Path) -> dict[Path, dict]:
    """Every checkpoint folder with a readable meta.json."""
    found = {}
    for meta in sorted(sweep_dir.glob("bundle-*/checkpoint_*/meta.json")):
        try:
            found[meta.parent] = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue  # being written
    return found


def tags_by_bundle(sweep_dir: Path) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for meta in checkpoint_metas(sweep_dir).values():
        tags.setdefault(meta["bundle_id"], []).append(meta["tag"])
    return {bundle: sorted(t) for bundle, t in tags.items()}


def in_training(sweep_dir: Path, most_epochs: int | None = None) -> set[str]:
    """Bundles with a checkpoint past `init` but no `end` yet (with `most_epochs`, none past it:
    enough training left that the bundle cannot finish while its node is being removed)."""
    limit = "epoch-999999" if most_epochs is None else f"epoch-{most_epochs:06d}"
    return {b for b, tags in tags_by_bundle(sweep_dir).items()
            if "end" not in tags and len(tags) > 1 and max(t for t in tags if t != "init") <= limit}


def finished(sweep_dir: Path) -> set[str]:
    """Bundles with their `networks` rows and their `end` checkpoint on the storage."""
    rows = {p.stem for p in (sweep_dir / "tables" / "networks").glob("*.parquet")}
    return {b for b, tags in tags_by_bundle(sweep_dir).items() if "end" in tags} & rows


def assert_same_tables(run: Path, reference: Path) -> None:
    """Same networks, one row each; every checkpoint scored once; final values as the reference."""
    nets = pd.read_parquet(run / "tables" / "networks").set_index("network_id").sort_index()
    ref_nets = pd.read_parquet(reference / "tables" / "networks").set_index("network_id").sort_index()
    assert nets.index.is_unique and len(nets) == 16
    assert list(nets.index) == list(ref_nets.index)
    assert (nets["status"].astype(str) == ref_nets["status"].astype(str)).all()
    assert (nets[["steps", "epochs"]] == ref_nets[["steps", "epochs"]]).all().all()
    np.testing.assert_allclose(nets[NETWORK_VALUES], ref_nets[NETWORK_VALUES], rtol=1e-5, atol=1e-7)

    key = ["network_id", "checkpoint", "split", "metric"]
    scores = pd.read_parquet(run / "tables" / "scores")
    ref_scores = pd.read_parquet(reference / "tables" / "scores")
    for frame in (scores, ref_scores):
        for column in key:
            frame[column] = frame[column].astype(str)
    assert not scores.duplicated(key).any()
    assert (scores["status"].astype(str) == "ok").all(), scores.loc[scores["status"] != "ok", "message"].unique()
    merged = ref_scores.merge(scores, on=key, how="outer", suffixes=("_ref", ""), indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", key]
    assert set(scores["checkpoint"]) == set(TAGS)
    np.testing.assert_allclose(merged["mean"], merged["mean_ref"], rtol=1e-4, atol=1e-6)

    scored = {p.stem for p in (run / "tables" / "scores").glob("*.parquet")}
    written = {f"{m['bundle_id']}--{m['tag']}" for m in checkpoint_metas(run).values()}
    assert scored == written


# --- the reference: the README's `ray start` path ---------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory, short_tmp, env) -> Path:
    """An uninterrupted run on a two-node cluster started with `ray start`, joined by address."""
    root = tmp_path_factory.mktemp("reference")
    port = free_port()
    ray = str(Path(sys.executable).parent / "ray")
    temp_dir = str(short_tmp / "start")
    started = []
    try:
        for argv in ([ray, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                      "--include-dashboard=false"],
                     [ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--temp-dir={temp_dir}"]):
            started.append(Session(argv, root / f"ray-start-{len(started)}.log", env))
            assert started[-1].wait(120) == 0, started[-1].output()
        driver = Session(sweep_argv("run", str(write_spec(root)), "--address", f"127.0.0.1:{port}",
                                    "--storage", str(root), "--name", "ref", "--no-report"), root / "run.log", env)
        assert driver.wait() == 0, driver.output()[-3000:]
    finally:
        for session in started:
            session.end()
    return root / "ref"


def test_a_sweep_runs_on_a_cluster_started_with_ray_start(reference):
    nets = pd.read_parquet(reference / "tables" / "networks")
    assert len(nets) == 16 and nets["network_id"].is_unique and (nets["status"] == "budget").all()
    assert all(tags == TAGS for tags in tags_by_bundle(reference).values()) and len(tags_by_bundle(reference)) == 4
    assert_same_tables(reference, reference)


# --- a worker node lost mid-sweep -------------------------------------------------------------


def host_cluster(temp_dir: str, worker_cpus: list[float]) -> None:
    """Run as a script: a head without CPUs and worker nodes; prints the address and the workers'
    raylet process ids, then removes (without warning) each node id read from stdin."""
    import ray._common.utils
    import ray._private.utils
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # The cluster is private to the test: leave the machine's `--address auto` file alone.
    ray._private.utils.write_ray_address = lambda *args, **kwargs: None
    ray._common.utils.reset_ray_address = lambda *args, **kwargs: None
    # Notice a lost node in about 3 s rather than Ray's default of about 30 s.
    fast = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "_system_config": fast})
    nodes = {}
    for cpus in worker_cpus:
        node = cluster.add_node(num_cpus=cpus, temp_dir=temp_dir)
        nodes[node.node_id] = node
    raylets = {node_id: node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
               for node_id, node in nodes.items()}
    print("CLUSTER " + json.dumps({"address": cluster.address, "raylets": raylets}), flush=True)
    for line in sys.stdin:
        cluster.remove_node(nodes.pop(line.strip()), allow_graceful=False)
        print("REMOVED", flush=True)
    cluster.shutdown()


class ClusterHost:
    def __init__(self, temp_dir: Path, log: Path, env: dict, worker_cpus: list[float]):
        argv = [sys.executable, __file__, "host-cluster", str(temp_dir), json.dumps(worker_cpus)]
        self.session = Session(argv, log, env, stdin=subprocess.PIPE)
        info = self._line("CLUSTER ", timeout=120)
        self.address, self.raylets = info["address"], info["raylets"]

    def _line(self, prefix: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.session.output().splitlines():
                if line.startswith(prefix):
                    return json.loads(line[len(prefix):] or "null")
            if self.session.proc.poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"the cluster host did not print {prefix!r}:\n{self.session.output()[-3000:]}")

    def remove(self, node_id: str) -> None:
        self.session.proc.stdin.write(f"{node_id}\n".encode())
        self.session.proc.stdin.flush()
        self._line("REMOVED", timeout=60)

    def placement(self) -> dict[str, dict]:
        """Per worker node: the bundles its trial processes train (read from their working
        directory, Tune's `.../bundle-<id>`) and whether it runs a scoring actor."""
        found = {}
        for node_id, raylet in self.raylets.items():
            bundles, scorer = set(), False
            for pid, command in children(raylet):
                if command.startswith("ray::ImplicitFunc"):
                    try:
                        cwd = os.readlink(f"/proc/{pid}/cwd")
                    except OSError:
                        continue
                    if "bundle-" in cwd:
                        bundles.add(cwd.rsplit("bundle-", 1)[1].split("/")[0])
                scorer |= command.startswith("ray::ScoringActor")
            found[node_id] = {"bundles": bundles, "scorer": scorer}
        return found


def test_a_cluster_without_a_node_for_a_trial_is_said_not_waited_on_silently(tmp_path, short_tmp, env):
    host = ClusterHost(short_tmp / "small", tmp_path / "small.log", env, worker_cpus=[1])
    driver = None
    try:
        spec = write_spec(tmp_path)
        spec.write_text(spec.read_text().replace("cpus_per_trial: 1", "cpus_per_trial: 2"))
        driver = Session(sweep_argv("run", str(spec), "--address", host.address, "--storage", str(tmp_path),
                                    "--name", "big", "--no-report"), tmp_path / "big.log", env)
        deadline = time.monotonic() + 150
        while "none running" not in driver.output() and driver.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        waiting = driver.output()
        os.kill(driver.proc.pid, signal.SIGINT)
        code = driver.wait(timeout=120)
        output = driver.output()
    finally:
        if driver is not None:
            driver.end()
        host.session.end()
    assert f"[sweep] joined the Ray cluster at {host.address}: 2 node(s), 1 CPU core(s), 0 GPU(s)" in output, output
    assert ("sweep: warning: no node of the Ray cluster has the 2 CPU core(s) and 0 GPU(s) a trial asks "
            "(resources.cpus_per_trial and gpus_per_trial); of its 2 node(s), the most CPU cores one has are 1") \
        in output, output[-3000:]
    assert "scoring actor asks" not in output  # its 0 CPUs fit
    assert "[sweep] bundles 0/4 done, 0 running, 4 waiting" in waiting and waiting.rstrip().endswith(
        "none running: waiting for Ray to give a trial its resources (other work on the cluster, or no node large "
        "enough)"), waiting[-3000:]
    assert code == 128 + signal.SIGINT and "continue with: sweep resume" in output, output[-3000:]


def test_a_cluster_with_token_authentication_answers_a_driver_without_its_token_at_once(tmp_path, short_tmp, env):
    # ray.init would retry for 20 s, a C++ warning line each second, and leave a sweep folder.
    host = ClusterHost(short_tmp / "auth", tmp_path / "auth.log", env, worker_cpus=[])
    spec = write_spec(tmp_path)
    outputs = {}
    try:
        for name, changes in {"none": {"RAY_AUTH_MODE": None}, "other": {"RAY_AUTH_TOKEN": secrets.token_hex(32)}}.items():
            driver_env = {k: v for k, v in {**env, **changes}.items() if v is not None}
            driver = Session(sweep_argv("run", str(spec), "--address", host.address, "--storage",
                                        str(tmp_path / name)), tmp_path / f"{name}.log", driver_env)
            outputs[name] = (driver.wait(timeout=120), driver.output())
        # With the token: it joins (then Ctrl-C), the try at the cluster costing no message.
        driver = Session(sweep_argv("run", str(spec), "--address", host.address, "--storage", str(tmp_path / "ok")),
                         tmp_path / "ok.log", env)
        try:
            deadline = time.monotonic() + 120
            while "[sweep] joined the Ray cluster" not in driver.output() and driver.proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            os.kill(driver.proc.pid, signal.SIGINT)
            outputs["ok"] = (driver.wait(timeout=120), driver.output())
        finally:
            driver.end()
    finally:
        host.session.end()
    code, output = outputs["ok"]
    assert code == 130 and f"[sweep] joined the Ray cluster at {host.address}" in output, output[-3000:]
    assert "gcs_client" not in output and "uses token authentication" not in output, output[-3000:]
    said = f"sweep: error: the Ray cluster at --address {host.address} ({host.address}) uses token authentication, and "
    for name, how in {"none": "this command sent no token: run `export RAY_AUTH_MODE=token`",
                      "other": "refused this machine's token (~/.ray/auth_token or RAY_AUTH_TOKEN)"}.items():
        code, output = outputs[name]
        assert code == 2 and said + how in output and "gcs_client" not in output, output[-3000:]
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())  # no sweep folder


def test_a_lost_worker_node_costs_no_rows(reference, tmp_path, short_tmp, env):
    host = ClusterHost(short_tmp / "cluster", tmp_path / "cluster.log", env, worker_cpus=[2, 2])
    driver = None
    try:
        # Scoring takes half a CPU, so its actor lives on a worker node, which may be lost.
        driver = Session(sweep_argv("run", str(write_spec(tmp_path, scorer_cpus=0.5)), "--address", host.address,
                                    "--storage", str(tmp_path), "--name", "nodes", "--no-report"),
                         tmp_path / "run.log", env)
        sweep_dir = tmp_path / "nodes"
        trial_nodes, scorer_nodes, victim = set(), set(), None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while driver.proc.poll() is None and time.monotonic() < deadline:
            placement = host.placement()
            trial_nodes |= {n for n, p in placement.items() if p["bundles"]}
            scorer_nodes |= {n for n, p in placement.items() if p["scorer"]}
            if victim is None:
                # 90 of 120 epochs left: seconds of training, more than finding and removing a node takes.
                training = in_training(sweep_dir, most_epochs=30)
                ready = [n for n, p in placement.items() if p["bundles"] & training]
                # Wait for the node that also holds the scoring actor, so its work must be redone
                # too, while half the bundles are left; then take any node with a checkpointed trial.
                best = [n for n in ready if placement[n]["scorer"]]
                if not best and len(finished(sweep_dir)) >= 2:
                    best = ready
                if best:
                    victim, victim_bundles = best[0], placement[best[0]]["bundles"] & training
                    host.remove(victim)
            time.sleep(0.3)
        code = driver.wait()
        output = driver.output()
    finally:
        if driver is not None:
            driver.end()
        host.session.end()

    assert code == 0, output[-3000:]
    assert victim is not None, f"no trial was seen checkpointed on a worker node:\n{output[-3000:]}"
    assert len(trial_nodes) == 2, "trials did not spread over both worker nodes"
    assert scorer_nodes, "no scoring actor was seen on a worker node"
    # The lost trial resumed from a checkpoint, not from the start: it wrote no second `init`.
    assert any(f"[sweep] bundle {b}: trial failed after 1 attempt(s)" in output
               and "retrying from its last checkpoint (checkpoint_" in output for b in victim_bundles), output[-3000:]
    assert all(tags == TAGS for tags in tags_by_bundle(sweep_dir).values())
    assert_same_tables(sweep_dir, reference)  # the lost scoring actor's work was redone


# --- the driver killed ------------------------------------------------------------------------


def files_of(sweep_dir: Path, bundle: str) -> dict[str, int]:
    """What a finished bundle wrote, with modification times: resuming must not rewrite it."""
    paths = [*(sweep_dir / f"bundle-{bundle}").glob("checkpoint_*/*"),
             sweep_dir / "tables" / "networks" / f"{bundle}.parquet"]
    return {str(p.relative_to(sweep_dir)): p.stat().st_mtime_ns for p in paths}


def start_sweep(tmp_path: Path, name: str, env: dict) -> tuple[Session, Path]:
    """`sweep run` of the faults spec in its own session; the driver and the sweep's folder."""
    argv = sweep_argv("run", str(write_spec(tmp_path)), "--storage", str(tmp_path), "--name", name, "--no-report")
    return Session(argv, tmp_path / "run.log", env), tmp_path / name


def resume_sweep(sweep_dir: Path, tmp_path: Path, env: dict) -> tuple[int, str]:
    resumed = Session(sweep_argv("resume", str(sweep_dir), "--no-report"), tmp_path / "resume.log", env)
    try:
        code = resumed.wait()
    finally:
        resumed.end()
    return code, resumed.output()


def test_a_killed_driver_is_resumed_without_retraining(reference, tmp_path, env):
    driver, sweep_dir = start_sweep(tmp_path, "driver", env)
    try:
        deadline, done, training = time.monotonic() + RUN_TIMEOUT_S, set(), set()
        while driver.proc.poll() is None and time.monotonic() < deadline:
            # Finished as resume judges it: an `end` checkpoint whose files were all copied (one
            # cut short by the kill is trained again, rightly).
            done = {b for b in finished(sweep_dir) if finished_meta(str(sweep_dir), b) is not None}
            training = in_training(sweep_dir)
            if done and training:
                break
            time.sleep(0.2)
        assert driver.proc.poll() is None and done and training, \
            f"the sweep could not be caught mid-way:\n{driver.output()[-3000:]}"
        os.kill(driver.proc.pid, signal.SIGKILL)
    finally:
        driver.end()  # the local Ray the driver started, orphaned by the kill
    before = {bundle: files_of(sweep_dir, bundle) for bundle in done}

    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 0, output[-3000:]
    assert "taking over a stale lock" in output  # the killed driver's, whose process is gone
    for bundle, files in before.items():
        assert files_of(sweep_dir, bundle) == files, f"bundle {bundle}, finished before the kill, was written again"
    assert all(tags == TAGS for tags in tags_by_bundle(sweep_dir).values())
    assert_same_tables(sweep_dir, reference)


def wait_until_training(driver: Session, sweep_dir: Path) -> None:
    """Until a bundle has a checkpoint past `init`: the sweep is mid-way, to be interrupted."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while driver.proc.poll() is None and time.monotonic() < deadline and not in_training(sweep_dir):
        time.sleep(0.05)
    assert driver.proc.poll() is None, f"the sweep ended before it could be interrupted:\n{driver.output()}"


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM, signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm-twice"])
def test_an_interrupted_run_says_so_and_resume_completes_it(signals, reference, tmp_path, env):
    # Ctrl-C reaches the terminal's whole process group (the driver and the local Ray it
    # started); `kill PID` only the driver. A second signal stops at once.
    driver, sweep_dir = start_sweep(tmp_path, "stopped", env)
    try:
        wait_until_training(driver, sweep_dir)
        for sig in signals:
            if sig == signal.SIGINT:
                os.killpg(driver.proc.pid, sig)
            else:
                os.kill(driver.proc.pid, sig)
            time.sleep(0.1)
        code = driver.wait(timeout=90)
    finally:
        driver.end()
    output = driver.output()
    name = signal.Signals(signals[0]).name
    assert code == 128 + signals[0], output[-3000:]
    assert f"sweep: interrupted ({name}): " in output and f"sweep: continue with: sweep resume {sweep_dir}" in output
    assert "bundle(s) finished training" in output and "Traceback" not in output, output[-3000:]
    # Ray's and Tune's own hints went to the sweep's log, not the terminal.
    assert "Tuner.restore" not in output and "Configuration for experiment" not in output
    assert "[sweep] Ray's own messages:" in output and (sweep_dir / "sweep.log").is_file()
    # Bundles cut short have checkpoints and no networks rows yet: status says they started.

    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 0, output[-3000:]
    assert all(tags == TAGS for tags in tags_by_bundle(sweep_dir).values())
    assert_same_tables(sweep_dir, reference)


def sigterm_once(driver: Session, ready, delay: float = 0.0) -> tuple[int, str]:
    """SIGTERM to the driver `delay` seconds after `ready()` holds; its exit status and output."""
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while driver.proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(driver.proc.pid, signal.SIGTERM)
        code = driver.wait(timeout=90)
    finally:
        driver.end()
    return code, driver.output()


def test_a_run_stopped_while_ray_starts_says_so_and_resume_completes_it(reference, tmp_path, env):
    driver, sweep_dir = start_sweep(tmp_path, "starting", env)
    # The plan is written under the lock just before Ray starts, which takes seconds.
    code, output = sigterm_once(driver, (sweep_dir / "sweep.json").exists, delay=0.3)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert re.search(r"sweep: interrupted \(SIGTERM\): 0 of \d+ bundle\(s\) finished training", output), output[-3000:]
    assert f"sweep: continue with: sweep resume {sweep_dir}" in output and "Traceback" not in output, output[-3000:]
    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 0, output[-3000:]
    assert_same_tables(sweep_dir, reference)


def test_a_signal_after_the_work_says_how_to_write_the_report(tmp_path, env):
    argv = sweep_argv("run", str(write_spec(tmp_path)), "--storage", str(tmp_path), "--name", "reporting")
    driver = Session(argv, tmp_path / "run.log", {**env, "PYTHONUNBUFFERED": "1"})
    code, output = sigterm_once(driver, lambda: "[sweep] finished in" in driver.output())
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert f"sweep: interrupted (SIGTERM) after its work was done (the tables are written); `sweep report " \
           f"{tmp_path / 'reporting'}` writes the report" in output, output[-3000:]
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]


def test_a_copied_sweep_resumes_into_its_own_folder_and_leaves_the_original_alone(reference, tmp_path, env):
    # Copied elsewhere (fetched from a cluster, a backup) and renamed: Tune's saved trial configs
    # and callbacks still name the original folder; the resumed copy must write only its own.
    driver, sweep_dir = start_sweep(tmp_path, "original", env)
    try:
        wait_until_training(driver, sweep_dir)
        os.killpg(driver.proc.pid, signal.SIGINT)
        assert driver.wait(timeout=90) == 128 + signal.SIGINT, driver.output()[-3000:]
    finally:
        driver.end()
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(sweep_dir, copy, symlinks=True)
    original = {str(p.relative_to(sweep_dir)): p.stat().st_mtime_ns for p in sweep_dir.rglob("*")}

    code, output = resume_sweep(copy, tmp_path, env)
    assert code == 0, output[-3000:]
    assert {str(p.relative_to(sweep_dir)): p.stat().st_mtime_ns for p in sweep_dir.rglob("*")} == original
    assert all(tags == TAGS for tags in tags_by_bundle(copy).values())
    assert_same_tables(copy, reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_while_an_interrupted_run_shuts_down_leave_no_traceback(signum, tmp_path, env):
    # A `kill` repeated (a supervisor's retries, a second Ctrl-C) can land after the command has
    # said it stopped, while the local Ray it started shuts down, or while the process exits: it
    # ends there, quietly, with the command's status (not by the signal's default action).
    driver, sweep_dir = start_sweep(tmp_path, "stopping", env)
    try:
        wait_until_training(driver, sweep_dir)
        os.kill(driver.proc.pid, signum)
        deadline = time.monotonic() + 90
        while driver.proc.poll() is None and "sweep: continue with:" not in driver.output() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        sent = 0
        while driver.proc.poll() is None and sent < 500:
            os.kill(driver.proc.pid, signum)
            sent += 1
            time.sleep(0.01)
        code = driver.wait(timeout=90)
    finally:
        driver.end()
    output = driver.output()
    assert sent, "the driver exited before it could be signalled while shutting down"
    assert code == 128 + signum, (code, output[-3000:])
    assert f"sweep: interrupted ({signal.Signals(signum).name}): " in output and "Traceback" not in output, \
        output[-3000:]
    assert "Exception ignored" not in output, output[-3000:]


def test_an_interrupted_score_says_so_and_scoring_again_completes_it(reference, tmp_path, env):
    sweep_dir = tmp_path / "ref"
    shutil.copytree(reference, sweep_dir)
    for table in ("scores", "points", "trajectories", "slices"):
        shutil.rmtree(sweep_dir / "tables" / table, ignore_errors=True)  # the spec writes no trajectories
    scorer = Session(sweep_argv("score", str(sweep_dir)), tmp_path / "score.log", env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while scorer.proc.poll() is None and time.monotonic() < deadline and \
                not list((sweep_dir / "tables").glob("scores/*.parquet")):
            time.sleep(0.05)
        assert scorer.proc.poll() is None, f"scoring ended before it could be interrupted:\n{scorer.output()}"
        os.killpg(scorer.proc.pid, signal.SIGINT)
        code = scorer.wait(timeout=90)
    finally:
        scorer.end()
    output = scorer.output()
    assert code == 130, output[-3000:]
    assert "sweep: interrupted (SIGINT): " in output and f"sweep: continue with: sweep score {sweep_dir}" in output
    scored = len(list((sweep_dir / "tables").glob("scores/*.parquet")))
    assert 0 < scored < len(TAGS) * 4, output[-3000:]  # stopped part of the way
    again = Session(sweep_argv("score", str(sweep_dir)), tmp_path / "again.log", env)
    try:
        assert again.wait() == 0, again.output()[-3000:]
    finally:
        again.end()
    assert_same_tables(sweep_dir, reference)


def test_a_rescore_with_new_settings_cut_short_is_finished_by_a_plain_score(reference, tmp_path, env):
    # Stopped part of the way, the tables hold both settings; `sweep score` (no --rescore, no
    # settings) scores the checkpoints still holding the old ones, and only those.
    sweep_dir = tmp_path / "ref"
    shutil.copytree(reference, sweep_dir)
    scores = sweep_dir / "tables" / "scores"
    written = {path: path.stat().st_mtime_ns for path in scores.glob("*.parquet")}
    scorer = Session(sweep_argv("score", str(sweep_dir), "--points", "20"), tmp_path / "score.log", env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while scorer.proc.poll() is None and time.monotonic() < deadline and \
                all(path.stat().st_mtime_ns == mtime for path, mtime in written.items()):
            time.sleep(0.05)
        assert scorer.proc.poll() is None, f"scoring ended before it could be interrupted:\n{scorer.output()}"
        os.killpg(scorer.proc.pid, signal.SIGINT)
        assert scorer.wait(timeout=90) == 130, scorer.output()[-3000:]
    finally:
        scorer.end()
    output = scorer.output()
    assert f"sweep: continue with: sweep score {sweep_dir}\n" in output, output[-3000:]
    settings = {path.stem: set(pd.read_parquet(path)["n_points"]) for path in scores.glob("*.parquet")}
    old = sorted(key for key, n_points in settings.items() if 50 in n_points)
    assert 0 < len(old) < len(settings), output[-3000:]  # stopped part of the way
    status = subprocess.run(sweep_argv("status", str(sweep_dir)), capture_output=True, text=True, env=env, timeout=120)
    assert (f"{len(old)} checkpoint(s) scored with other settings than sweep.json's scoring (counted as not "
            "scored)") in status.stdout, status.stdout + status.stderr
    again = Session(sweep_argv("score", str(sweep_dir)), tmp_path / "again.log", env)
    try:
        assert again.wait() == 0, again.output()[-3000:]
    finally:
        again.end()
    assert f"[sweep] scored {len(old)} of {len(settings)} checkpoint(s)" in again.output()
    rows = pd.read_parquet(scores)
    assert set(rows["n_points"]) == {0, 20} and (rows["status"] == "ok").all()
    assert rows["settings"].astype(str).nunique() == 1 and json.loads(rows["settings"].iloc[0])["points"] == 20


@pytest.mark.parametrize("error", ["ENOSPC", "EIO"])
def test_a_storage_that_fails_writes_leaves_no_partial_file_and_resume_completes(error, reference, tmp_path, env):
    # Every write of a `networks` file fails (disk full, I/O error) in every process of the sweep:
    # the trials fail after their retries, nothing half-written is visible, the failures are said;
    # once the storage is healthy again, `sweep resume` ends with the reference's tables.
    driver, sweep_dir = start_sweep(tmp_path, "faulty", {**env, storage.FAULT_ENV: f"/tables/networks/:{error}"})
    try:
        code = driver.wait()
    finally:
        driver.end()
    output = driver.output()
    assert code == 1, output[-3000:]
    assert f"{os.strerror(getattr(errno, error))} (injected" in output and "Traceback" not in output, output[-3000:]
    assert not list(sweep_dir.rglob("*.tmp")) and not list((sweep_dir / "tables").glob("networks/*.parquet"))
    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 0, output[-3000:]
    assert_same_tables(sweep_dir, reference)


# --- a finished sweep's folder damaged --------------------------------------------------------


@pytest.fixture(scope="module")
def damaged(reference, tmp_path_factory, env):
    """A copy of the reference with one scores file truncated (as an interrupted copy leaves it)
    and one checkpoint's weights corrupted and unscored; the commands' answers before and after
    following the advice: delete the truncated file, run `sweep score`."""
    sweep_dir = tmp_path_factory.mktemp("damaged") / "ref"
    shutil.copytree(reference, sweep_dir)
    tables = sweep_dir / "tables"
    truncated = sorted((tables / "scores").glob("*--end.parquet"))[0]
    truncated.write_bytes(truncated.read_bytes()[:200])
    corrupt_meta = next(m for m in checkpoint_metas(sweep_dir).items() if m[1]["tag"] == "epoch-000060")
    corrupt_key = f"{corrupt_meta[1]['bundle_id']}--epoch-000060"
    population = corrupt_meta[0] / "population.pt"
    population.write_bytes(b"not a checkpoint" + population.read_bytes()[:100])
    for table in ("scores", "points"):
        (tables / table / f"{corrupt_key}.parquet").unlink(missing_ok=True)

    def command(*args: str) -> tuple[int, str]:
        done = subprocess.run(sweep_argv(*args), capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
        return done.returncode, done.stdout + done.stderr

    report = command("report", str(sweep_dir), "--no-bootstrap")
    truncated.unlink()  # what the message advises
    # A damaged points file: its checkpoint counts as scored while its scores file is there.
    points = sorted((tables / "points").glob("*--end.parquet"))[-1]
    points.write_bytes(points.read_bytes()[:200])
    points_report = command("report", str(sweep_dir), "--no-bootstrap")
    points.unlink()  # what the message advises
    (tables / "scores" / points.name).unlink()
    session = Session(sweep_argv("score", str(sweep_dir)), sweep_dir.parent / "score.log", env)
    try:
        score = (session.wait(), session.output())
    finally:
        session.end()
    return {"dir": sweep_dir, "truncated": truncated, "population": population, "key": corrupt_key,
            "report": report, "score": score, "points": points, "points_report": points_report}


def key_rows(sweep_dir: Path, key: str) -> pd.DataFrame:
    """The scores rows of one `<bundle>--<tag>` file, read through the whole table."""
    bundle, tag = key.split("--")
    members = pd.read_parquet(sweep_dir / "tables" / "networks").query("bundle_id == @bundle")["network_id"]
    scores = pd.read_parquet(sweep_dir / "tables" / "scores")
    rows = scores[scores["network_id"].isin(members) & (scores["checkpoint"] == tag)]
    return rows.astype({"checkpoint": str, "split": str, "metric": str}).sort_values(
        ["network_id", "split", "metric"]).reset_index(drop=True)


def test_a_truncated_table_file_is_named_and_rescoring_restores_it(damaged, reference):
    code, text = damaged["report"]
    assert code == 2 and str(damaged["truncated"]) in text and "Traceback" not in text, text
    key = damaged["truncated"].stem
    restored, expected = key_rows(damaged["dir"], key), key_rows(reference, key)
    assert len(restored) == len(expected) > 0 and (restored["status"] == "ok").all()
    np.testing.assert_allclose(restored["mean"], expected["mean"], rtol=1e-5)


def test_a_damaged_points_file_is_written_again_as_its_message_says(damaged, reference):
    code, text = damaged["points_report"]
    name = damaged["points"].name
    assert code == 2 and str(damaged["points"]) in text and "Traceback" not in text, text
    assert f"delete it and its checkpoint's {damaged['dir'] / 'tables' / 'scores' / name}, then run `sweep " \
           "resume`" in " ".join(text.split()), text
    restored = pd.read_parquet(damaged["dir"] / "tables" / "points" / name)
    expected = pd.read_parquet(reference / "tables" / "points" / name)
    assert len(restored) == len(expected) > 0
    pd.testing.assert_frame_equal(restored.drop(columns=restored.select_dtypes(float).columns),
                                  expected.drop(columns=expected.select_dtypes(float).columns))
    np.testing.assert_allclose(restored.select_dtypes(float), expected.select_dtypes(float), rtol=1e-4, atol=1e-6)


def test_a_corrupted_checkpoint_is_recorded_as_failed_rows(damaged, reference):
    code, text = damaged["score"]
    assert code == 1 and str(damaged["population"]) in text and "Traceback" not in text, text
    scores = pd.read_parquet(damaged["dir"] / "tables" / "scores")
    assert not scores.duplicated(["network_id", "checkpoint", "split", "metric"]).any()
    assert len(scores) == len(pd.read_parquet(reference / "tables" / "scores"))
    failed, expected = key_rows(damaged["dir"], damaged["key"]), key_rows(reference, damaged["key"])
    assert (failed["status"] == "failed").all() and (scores["status"] == "failed").sum() == len(failed)
    assert failed[["network_id", "split", "metric"]].equals(expected[["network_id", "split", "metric"]])
    assert failed["mean"].isna().all() and failed["message"].str.contains(str(damaged["population"])).all()


def test_a_truncated_networks_file_is_named_by_status_and_load(reference, tmp_path, env):
    import analysis

    sweep_dir = tmp_path / "ref"
    shutil.copytree(reference, sweep_dir)
    damaged_file = sorted((sweep_dir / "tables" / "networks").glob("*.parquet"))[0]
    rows = pd.read_parquet(damaged_file)
    damaged_file.write_bytes(damaged_file.read_bytes()[:200])
    done = subprocess.run(sweep_argv("status", str(sweep_dir)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and str(damaged_file) in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert f"delete it and run `sweep resume {sweep_dir}`" in done.stderr
    with pytest.raises(OSError, match=str(damaged_file)):
        analysis.load(sweep_dir)
    # The advice works: the finished bundle is not trained again, its rows come back from its end checkpoint.
    damaged_file.unlink()
    done = subprocess.run(sweep_argv("status", str(sweep_dir)), capture_output=True, text=True, timeout=60)
    assert "bundles: 4 of 4 finished\n" in done.stdout, done.stdout
    assert (f"1 finished bundle(s) have no networks file (deleted or not copied): `sweep resume {sweep_dir}` writes "
            "it again") in done.stdout, done.stdout
    # A bundle without its end checkpoint has not finished: it started, and its rows come when it does.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(sweep_dir, unfinished)
    bundle = unfinished / f"bundle-{damaged_file.stem}"
    shutil.rmtree(sorted(bundle.glob("checkpoint_*"))[-1])
    (unfinished / "tables" / "scores" / f"{damaged_file.stem}--end.parquet").unlink()
    done = subprocess.run(sweep_argv("status", str(unfinished)), capture_output=True, text=True, timeout=60)
    assert "bundles: 3 of 4 finished, 1 started (their networks are recorded when they finish)" in done.stdout, \
        done.stdout
    assert "no networks file" not in done.stdout
    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 0, output[-3000:]
    assert "wrote the networks file of 1 finished bundle(s) again, from their end checkpoints" in output
    pd.testing.assert_frame_equal(pd.read_parquet(damaged_file), rows)
    # An end checkpoint that cannot give the rows (here: written by another version) is named, the
    # resume goes on to its scoring and report, and exits 1.
    import torch

    from sweep.training.checkpoints import POPULATION_FILE

    damaged_file.unlink()
    end = sorted((sweep_dir / f"bundle-{damaged_file.stem}").glob("checkpoint_*"))[-1] / POPULATION_FILE
    population = torch.load(end, weights_only=True)
    population["trainer"]["format"] = 999
    torch.save(population, end)
    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 1, output[-3000:]
    assert (f"could not write a networks file again from its end checkpoint: bundle {damaged_file.stem}: trainer "
            "state has format 999") in output and "Traceback" not in output, output[-3000:]
    # It went on to its scoring (nothing was left to score, so no count of none) and its summary.
    assert "[sweep] finished in" in output and "left unscored, failed" not in output, output[-3000:]
    # Weights that cannot be read at all (an upload cut short) are named too, not passed over.
    end.write_bytes(end.read_bytes()[:100])
    code, output = resume_sweep(sweep_dir, tmp_path, env)
    assert code == 1 and (f"could not write a networks file again from its end checkpoint: bundle {damaged_file.stem}: "
                          f"{end} cannot be read") in output and "Traceback" not in output, output[-3000:]


def test_a_truncated_networks_file_at_the_end_of_a_run_is_named(reference, tmp_path, capsys):
    # What `run` and `resume` print when they end, or are interrupted, over such a file.
    from sweep.command import cli
    from sweep.plan.sweep_plan import load_plan

    sweep_dir = tmp_path / "ref"
    shutil.copytree(reference, sweep_dir)
    damaged_file = sorted((sweep_dir / "tables" / "networks").glob("*.parquet"))[0]
    damaged_file.write_bytes(damaged_file.read_bytes()[:200])
    plan = load_plan(str(sweep_dir))
    assert cli.finish(plan, [], time.monotonic(), report=False) == 1
    ended = capsys.readouterr().err
    assert str(damaged_file) in ended and f"sweep resume {sweep_dir}" in ended, ended
    assert cli.interrupted(plan, "resume") == 128 + signal.SIGINT
    stopped = capsys.readouterr().err
    assert str(damaged_file) in stopped and f"continue with: sweep resume {sweep_dir}" in stopped, stopped


if __name__ == "__main__" and sys.argv[1:2] == ["host-cluster"]:
    host_cluster(sys.argv[2], json.loads(sys.argv[3]))
