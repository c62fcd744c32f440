"""One command at a time per sweep (sweep.command.locks): a second `run`, `resume` or `score` is refused
with who holds the sweep and since when; a lock whose process or host is gone is taken over;
`status` and `report` never need it."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import run_cli
from specs import MINIMAL_SPEC

from sweep.command import locks
from sweep.plan import sweep_plan
from sweep.plan.planner import expand
from sweep.plan.spec import parse_spec


@pytest.fixture
def sweep_dir(tmp_path):
    """A sweep's folder as `sweep run` leaves it before training (its plan saved)."""
    import yaml

    spec = parse_spec(yaml.safe_load(MINIMAL_SPEC))
    plan = sweep_plan.make_plan(spec, expand(spec), name="locked", storage=str(tmp_path), spec_source="-",
                            spec_text=MINIMAL_SPEC, spec_suffix=".yaml")
    sweep_plan.save_plan(plan)
    return plan.sweep_dir


def write_lock(sweep_dir: str, **holder) -> None:
    now = time.time()
    values = {"host": socket.gethostname(), "pid": 1, "pid_start": None, "command": "run", "started": now - 60,
              "heartbeat": now, "token": "other"}
    (Path(sweep_dir) / locks.LOCK_FILE).write_text(json.dumps({**values, **holder}))


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("command", ["resume", "score"])
def test_a_second_command_on_a_held_sweep_is_refused_with_its_holder(command, sweep_dir, capsys):
    with locks.holding(sweep_dir, "run"):
        code, text = run_cli(capsys, command, sweep_dir)
        assert code == 2, text
        assert f"{sweep_dir} is in use by `sweep run` (process {os.getpid()} on " \
               f"{socket.gethostname()}, since " in text
        code, text = run_cli(capsys, "status", sweep_dir)  # reading needs no lock
        assert code == 0 and "bundles: 0 of 1 finished" in text, text
    assert not (Path(sweep_dir) / locks.LOCK_FILE).exists()  # released


def test_run_into_an_existing_or_held_sweep_is_refused(sweep_dir, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(MINIMAL_SPEC)
    plan = (Path(sweep_dir) / sweep_plan.SWEEP_FILE).read_bytes()
    code, text = run_cli(capsys, "run", spec, "--storage", tmp_path, "--name", "locked")
    assert code == 2 and f"{sweep_dir} already holds a sweep; continue it with `sweep resume {sweep_dir}`" in text
    code, text = run_cli(capsys, "run", spec, "--storage", tmp_path, "--name", "locked", "--dry-run")
    assert code == 0 and "a real run would stop here" in text and "already holds a sweep" in text
    assert (Path(sweep_dir) / sweep_plan.SWEEP_FILE).read_bytes() == plan  # untouched
    # Another run that holds the folder but has not saved its plan yet
    (Path(sweep_dir) / sweep_plan.SWEEP_FILE).unlink()
    with locks.holding(sweep_dir, "run"):
        code, text = run_cli(capsys, "run", spec, "--storage", tmp_path, "--name", "locked")
    assert code == 2 and "is in use by `sweep run`" in text, text


@pytest.mark.parametrize("holder, stale", [
    ({"pid": "dead"}, True),                                  # this host, its process gone
    ({"pid": "self", "pid_start": "not-its-start"}, True),     # this host, its id reused by another process
    ({"pid": "self"}, False),                                  # this host, alive
    ({"host": "elsewhere", "heartbeat": 0.0}, True),           # another host, silent for long
    ({"host": "elsewhere"}, False),                            # another host, heartbeat fresh
])
def test_a_lock_whose_holder_is_gone_is_taken_over(holder, stale, sweep_dir, capsys):
    pid = {"dead": dead_pid(), "self": os.getpid()}.get(holder.get("pid"), 1)
    start = holder.get("pid_start", locks._process_start(pid))
    write_lock(sweep_dir, **{**holder, "pid": pid, "pid_start": start})
    if stale:
        with locks.holding(sweep_dir, "score") as lock:
            held = json.loads((Path(sweep_dir) / locks.LOCK_FILE).read_text())
            assert held["token"] == lock.me["token"] and held["pid"] == os.getpid()
        assert "taking over a stale lock" in capsys.readouterr().err
    else:
        with pytest.raises(locks.SweepLocked, match="is in use by `sweep run`"):
            with locks.holding(sweep_dir, "score"):
                pass


def test_two_commands_taking_over_one_stale_lock_never_both_hold_it(sweep_dir, capsys):
    write_lock(sweep_dir, pid=dead_pid(), token="stale")
    reread, go = threading.Event(), threading.Event()

    class Paused(locks._Lock):
        """Stops after its second read: the one that checks the stale lock is still there."""
        reads = 0

        def _read(self, tries=1):
            holder = super()._read(tries)
            self.reads += 1
            if self.reads == 2:
                reread.set()
                go.wait(10)
            return holder

    first = Paused(sweep_dir, "resume")
    thread = threading.Thread(target=first.acquire)
    thread.start()
    try:
        assert reread.wait(10)
        with pytest.raises(locks.SweepLocked, match="another command is taking over the stale lock"):
            with locks.holding(sweep_dir, "score"):
                pass
    finally:
        go.set()
        thread.join(10)
    assert json.loads((Path(sweep_dir) / locks.LOCK_FILE).read_text())["token"] == first.me["token"]
    first.release()
    assert not list(Path(sweep_dir).glob(f"{locks.LOCK_FILE}*"))
    # a marker left by a command that died mid-takeover is named, for the user to delete
    write_lock(sweep_dir, pid=dead_pid(), token="stale")
    marker = Path(sweep_dir) / f"{locks.LOCK_FILE}.takeover-stale"
    gone = dead_pid()
    marker.write_text(json.dumps({"host": socket.gethostname(), "pid": gone, "pid_start": None, "command": "resume",
                                  "started": time.time(), "heartbeat": time.time(), "token": "maker"}))
    with pytest.raises(locks.SweepLocked, match=f"process {gone} .* is gone; delete {marker} and try again"):
        with locks.holding(sweep_dir, "score"):
            pass
    marker.unlink()
    with locks.holding(sweep_dir, "score"):
        pass


def test_a_taken_over_holder_never_writes_over_the_new_one(sweep_dir, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    with locks.holding(sweep_dir, "run") as first:
        write_lock(sweep_dir, token="newcomer")  # as a takeover by another host would
        time.sleep(0.3)  # several heartbeats
        held = json.loads((Path(sweep_dir) / locks.LOCK_FILE).read_text())
        assert held["token"] == "newcomer"
        assert first.me["token"] != "newcomer"
    assert (Path(sweep_dir) / locks.LOCK_FILE).exists()  # not ours to delete


def test_a_lock_the_storage_cannot_read_is_never_taken_over(sweep_dir, capsys, monkeypatch):
    # A read that fails (here the lock's path is a folder: a storage error, not a missing or cut-short
    # file) may hide a live holder: refused with the storage's error, not taken over.
    monkeypatch.setattr(locks, "RETRY_S", 0.01)
    (Path(sweep_dir) / locks.LOCK_FILE).mkdir()
    code, text = run_cli(capsys, "score", sweep_dir)
    assert code == 2 and f"cannot take the lock {sweep_dir}/{locks.LOCK_FILE}: " in text, text
    assert "taking over" not in text and "Traceback" not in text
    assert (Path(sweep_dir) / locks.LOCK_FILE).is_dir()


def test_a_heartbeat_the_storage_misses_goes_on(sweep_dir, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    path = Path(sweep_dir) / locks.LOCK_FILE
    read_bytes, failing = locks.storage.read_bytes, {"on": False}

    def flaky(fs, where):  # the storage errs while "on" (an object store timing out, say)
        if failing["on"]:
            raise OSError("timed out")
        return read_bytes(fs, where)

    monkeypatch.setattr(locks.storage, "read_bytes", flaky)
    with locks.holding(sweep_dir, "run") as lock:
        failing["on"] = True
        time.sleep(0.3)  # several beats miss
        before = json.loads(path.read_text())["heartbeat"]
        failing["on"] = False
        deadline = time.monotonic() + 10  # a beat comes within 0.05 s; a loaded machine may delay it
        while json.loads(path.read_text())["heartbeat"] <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        held = json.loads(path.read_text())
        assert held["token"] == lock.me["token"] and held["heartbeat"] > before
        assert lock._beat.is_alive()
    assert not path.exists()
