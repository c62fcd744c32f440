"""The `sweep` command's entry point. It imports nothing heavy itself, so that Ctrl-C while the
command's modules load (pandas, pyarrow, pydantic: a second or more on a busy machine) ends as
quietly as it does once they have, not with a traceback of the import."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from sweep.command import cli
    except KeyboardInterrupt:
        print("sweep: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return cli.main(argv)
