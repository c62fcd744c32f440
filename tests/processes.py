"""Commands run as a user runs them, in sessions of their own: a sweep's local Ray starts workers
that change process group but never session, so ending the session ends all of it (never
`ray stop`, which would end every Ray on the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(capsys, *argv) -> tuple[int, str]:
    """A `sweep` command run in this process: (its exit status, what it printed)."""
    from sweep.command.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def session_pids(sid: int) -> list[int]:
    """Processes of a session: Ray's workers change process group, but never session."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                pids.append(int(entry.name))
    return pids


class Session:
    """A command in a new session, its output in a file; `end` kills what is left of the session."""

    def __init__(self, argv: list[str], log: Path, env: dict, stdin=None):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=stdin, env=env,
                                         start_new_session=True, cwd=ROOT)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.end()
            pytest.fail(f"{self.proc.args} did not finish in {timeout}s; output:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def end(self) -> None:
        for pid in session_pids(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


def sweep_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweep", *args]
