"""The `sweep` command's entry point. It imports nothing heavy itself, so that Ctrl-C while the
command's modules load (pandas, pyarrow, pydantic: a second or more on a busy machine) ends as
quietly as it does once they have, not with a traceback of the import, nor lost in one."""

from __future__ import annotations

import sys

from sweep.command import interrupts


def main(argv: list[str] | None = None) -> int:
    """The console script's (`sweep`, `python -m sweep`): it owns the process, whose handlers it
    leaves set to end it on a signal once the command is done. A program runs a command with
    `sweep.command.cli.main`, which keeps the program's handlers."""
    with interrupts.loading():
        try:
            from sweep.command import cli

            if interrupts.requested():  # its KeyboardInterrupt was lost inside an import
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            print("sweep: interrupted while starting; nothing was done", file=sys.stderr)
            return 130
        code = cli.main(argv)
    interrupts.leaving(code)
    return code
