"""The `sweep` command: run, resume, status, score, report, presets, schema.

Ray, torch and matplotlib are imported only by the commands that use them, so a refused spec, a
dry run and `sweep status` answer without starting them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import select
import signal
import socket
import sys
import subprocess
import tempfile
import time

import pyarrow
import pyarrow.fs

from sweep.command import interrupts, locks
from sweep.command.status import describe, scoring_state, stale_without_checkpoints
from sweep.plan import costs, planner, storage, sweep_plan
from sweep.plan.networks import BundleConfig, limit_networks
from sweep.plan.planner import plan_summary
from sweep.plan.presets import list_presets
from sweep.plan.spec import (MAX_GPU_MEMORY_GIB, SpecError, check_sweep_name, load_spec, parse_spec_text, read_spec,
                             spec_origin, spec_schema)
from sweep.scoring.settings import METRICS, ScoringSettings
from sweep.scoring.table_schemas import differing_settings, recorded_settings, setting_change
from sweep.scoring.table_writer import TableWriter
from sweep.training import checkpoints

DEFAULT_PRESET = "digits"


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = None
    try:
        args = build_parser().parse_args(argv)
        with interrupts.restored():  # a program calling main keeps its own handlers
            return args.func(args) or 0
    except UsageError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not stdout_gone():
            raise
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # before the command's own handlers were installed, or after them
        path = getattr(args, "path", None)
        if path:
            again = f"sweep score {path}" if args.command == "score" else f"sweep resume {path}"
            print(f"sweep: interrupted; `sweep status {path}` says what finished, `{again}` continues it",
                  file=sys.stderr)
        else:
            print("sweep: interrupted; if it printed a sweep folder, `sweep status FOLDER` says what finished "
                  "and `sweep resume FOLDER` continues it; if not, nothing started", file=sys.stderr)
        return 130


def stdout_gone() -> bool:
    """Whether the pipe that broke is stdout's (`sweep presets | head`: its reader has what it
    wanted: polling its write end says POLLERR); stdout then goes to /dev/null, so that the
    flush at exit cannot fail again."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        broken = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or a stdout without a descriptor
        return False
    if broken:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return broken


VERBOSE_HELP = "show Ray's and Ray Tune's own messages here (default: in the sweep's log file, sweep.log)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep from a preset or a spec file")
    run.add_argument("source", nargs="?", default=DEFAULT_PRESET,
                     help=f"preset name or .yaml/.toml spec (default: {DEFAULT_PRESET})")
    run.add_argument("--storage", help="folder or s3://, gs:// URI for checkpoints and tables (default: ./sweeps)")
    run.add_argument("--name", help="sweep name (default: <spec name>-<date>-<time>)")
    run.add_argument("--address", help="Ray cluster to join, e.g. `auto` after `ray start` (default: a local Ray)")
    run.add_argument("--max-networks", type=int, help="train only the first N networks of the grid")
    run.add_argument("--gpu-memory", type=float, metavar="GIB",
                     help="memory of the cluster's cards, for sizing bundles (default: resources.gpu_memory_gib, "
                          "else this machine's card)")
    run.add_argument("--dry-run", action="store_true", help="print the expanded plan and exit")
    run.add_argument("--no-score", action="store_true", help="train only; score later with `sweep score`")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("path", help="the sweep folder (<storage>/<name>)")
    resume.add_argument("--address", help="Ray cluster to join (default: a local Ray)")
    resume.add_argument("--no-report", action="store_true")
    resume.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    resume.set_defaults(func=cmd_resume)

    status = sub.add_parser("status", help="show a sweep's progress from its tables and checkpoints")
    status.add_argument("path")
    status.set_defaults(func=cmd_status)

    score = sub.add_parser("score", help="score a sweep's checkpoints that are not yet scored")
    score.add_argument("path")
    score.add_argument("--metrics", nargs="+", help="metrics to compute (default: the sweep's; all: every one)")
    score.add_argument("--points", type=int, help="test points per network, and train points where the sweep scores "
                       "them")
    score.add_argument("--rescore", action="store_true", help="score every checkpoint again")
    score.add_argument("--address", help="Ray cluster to join (default: a local Ray)")
    score.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    score.set_defaults(func=cmd_score)

    report = sub.add_parser("report", help="write the report (Markdown + PNG) of a sweep")
    report.add_argument("path")
    report.add_argument("--no-bootstrap", action="store_true", help="skip bootstrap confidence intervals")
    report.add_argument("--include-unconverged", action="store_true",
                        help="also networks stopped at the budget short of 100%% train accuracy (default: the "
                             "paper's protocol, networks at 100%%)")
    report.set_defaults(func=cmd_report)

    presets = sub.add_parser("presets", help="list the presets")
    presets.set_defaults(func=cmd_presets)

    schema = sub.add_parser("schema", help="print the JSON schema of spec files (for editors' completion and checks)")
    schema.set_defaults(func=cmd_schema)
    return parser


def cmd_schema(args) -> int:
    print(json.dumps(spec_schema(), indent=2))
    return 0


def cmd_presets(args) -> int:
    reference = costs.reference_gpu()
    for name, description in list_presets():
        spec = load_spec(name)
        card = planner.card_for(spec, assume=True)
        bundles = planner.expand(spec, card)
        cost = planner.reference_projection(spec, bundles, card)
        print(f"{name:20s} {description}")
        if card is None:  # a CPU preset: its time on this machine first
            cpu = planner.cpu_projection_text(spec, bundles, planner.cpu_projection(spec, bundles), os.cpu_count())
            print(f"{'':20s} {cpu}")
        print(f"{'':20s} {len(bundles)} bundles; projected {costs.hours(cost.total_s)} on one {reference.name} "
              f"({costs.hours(cost.total_budget_s)} if every network runs its budget); `sweep run {name} --dry-run` "
              "shows how")
    return 0


def plan_run(args):
    """Validate everything the user gave before any Ray process starts. A dry run plans on a
    machine without the data or the GPUs too, and says what a real run would refuse."""
    from sweep.plan.datasets import DataError, check_available

    if args.name is not None:
        try:
            check_sweep_name(args.name)
        except SpecError as exc:
            raise UsageError(str(exc)) from None
    if args.gpu_memory is not None and not 0 < args.gpu_memory <= MAX_GPU_MEMORY_GIB:
        raise UsageError(f"--gpu-memory must be a card's memory in GiB (more than 0, at most {MAX_GPU_MEMORY_GIB:,}), "
                         f"got {args.gpu_memory}")
    if args.max_networks is not None and args.max_networks < 1:
        raise UsageError(f"--max-networks must be at least 1, got {args.max_networks}")
    problems = []
    try:
        text, suffix = read_spec(args.source)  # read once: sweep.json keeps the spec as it was run
        spec = parse_spec_text(text, suffix, spec_origin(args.source))
        if spec.resources.uses_gpus and not args.address and planner.local_card() is None:
            also = " (and resources.gpus_per_scoring_actor)" if spec.resources.gpus_per_scoring_actor != 0 else ""
            problems.append(
                f"the spec asks for GPUs (resources.gpus_per_trial: {spec.resources.gpus_per_trial}) but this "
                f"machine has none; set it to 0{also} or pass --address of a cluster with GPUs")
            if not args.dry_run:
                raise UsageError(problems[0])
        card = planner.card_for(spec, args.gpu_memory, assume=args.dry_run)
        if spec.resources.uses_gpus and card is None:
            raise SpecError(
                "the spec asks for GPUs but their memory is unknown (no card on this machine): set "
                "resources.gpu_memory_gib in the spec or pass --gpu-memory GIB (e.g. 24 for an A10G, 80 for an "
                "A100 80GB or H100, 141 for an H200)")
        try:  # what the spec asks of these cards: named by the spec, as its own errors are
            bundles = planner.expand(spec, card)
            if args.max_networks is not None:
                bundles = limit_networks(bundles, args.max_networks)
            shares = planner.gpu_shares(spec, bundles, card)
            scoring_share = planner.scoring_share(spec, bundles, card)
            planner.check_scoring_room(spec, bundles, shares, scoring_share, scored=not args.no_score)
        except SpecError as exc:
            raise SpecError(f"{spec_origin(args.source)}: {exc}") from None
    except (SpecError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    for data_spec in sorted({m.dataset for b in bundles for m in b.members}, key=str):
        try:
            check_available(data_spec)
        except DataError as exc:
            problems.append(str(exc))
    if not args.address:
        problems += planner.local_problems(spec, bundles, *local_resources(), planner.local_memory_bytes(),
                                           scoring=not args.no_score)
    if problems and not args.dry_run:
        raise UsageError("\n".join(problems))
    where = sweep_plan.resolve_storage(args.storage or spec.storage)
    try:
        storage.check_uri(where)
    except ValueError as exc:
        raise UsageError(f"{exc} (from {'--storage' if args.storage else 'the spec'})") from None
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = sweep_plan.make_plan(spec, bundles, name=name, storage=where, spec_source=args.source, spec_text=text,
                            spec_suffix=suffix, gpu_shares=shares, scoring_share=scoring_share,
                            scoring_batch=planner.scoring_batch(spec, bundles, card))
    return plan, spec, bundles, card, problems


def ray_started() -> bool:
    """Whether this process already runs Ray (an embedding program, a test session), without
    importing it."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def local_resources() -> tuple[float, int]:
    """The cores and cards a run without --address gets: those of the Ray this process already
    runs (an embedding program's choice), else this machine's."""
    if ray_started():
        have = sys.modules["ray"].cluster_resources()
        return have.get("CPU", 0.0), int(have.get("GPU", 0))
    return os.cpu_count() or 1, len(planner.local_cards())


def start_ray(address: str | None, log_file: str | None = None) -> None:
    """Start or join Ray; with `log_file`, Ray's and Tune's own messages (their hints, warnings
    and experiment summaries) go there, so the terminal shows the sweep's progress only."""
    import ray

    from sweep.command import runner

    if log_file:
        route_ray_logs(log_file)
    if ray.is_initialized():  # an embedding program (or a test session) already chose its Ray
        return
    if log_file:
        route_ray_retries(logging.getLogger("ray"))
    if not address and os.environ.get("RAY_ADDRESS"):
        print(f"[sweep] note: RAY_ADDRESS is set ({os.environ['RAY_ADDRESS']}), but a sweep joins a cluster only "
              "with --address (`--address auto` joins that one); starting a Ray of its own on this machine",
              flush=True)
    try:
        if address:
            context = ray.init(address=address, log_to_driver=False)
            have = ray.cluster_resources()
            nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
            # `auto` may find any cluster on the machine: say which one
            where = getattr(context, "address_info", {}).get("gcs_address", address)  # a Ray Client's has none
            print(f"[sweep] joined the Ray cluster at {where}: {nodes} node(s), "
                  f"{have.get('CPU', 0):g} CPU core(s), {have.get('GPU', 0):g} GPU(s)", flush=True)
        else:
            ray.init(**runner.LOCAL_RAY)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
        target = address or "a local Ray instance"
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE") != "token":
            hint = (" If the cluster uses token authentication (`ray start` turns it on when a token exists), "
                    "run `export RAY_AUTH_MODE=token` with the cluster's token in ~/.ray/auth_token or "
                    "RAY_AUTH_TOKEN.")
        raise UsageError(
            f"could not connect to Ray at {target}: {exc}. Start a cluster with `ray start --head` "
            f"(or check the address), or leave --address out to run locally.{hint}"
        ) from None


def ray_log_file(plan, verbose: bool) -> str | None:
    """sweep.log in the sweep's folder (a local file beside it for cloud storage); None with
    --verbose."""
    if verbose:
        return None
    fs, path = storage.resolve(plan.sweep_dir)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
        return os.path.join(path, "sweep.log")
    where = hashlib.sha256(plan.sweep_dir.encode()).hexdigest()[:8]  # same-named sweeps on other buckets
    return os.path.join(tempfile.gettempdir(), f"sweep-{plan.name}-{where}.log")


def route_ray_logs(log_file: str) -> None:
    # Tune's newer console output prints its experiment box and TensorBoard hint even at
    # verbose=0; the older one prints nothing there.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.data"):  # the loggers Ray gives handlers of their own
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
    print(f"[sweep] Ray's own messages: {log_file} (--verbose shows them here)", flush=True)


RAY_RETRY_NOTICES = ("retries remaining", "ray.kill")  # Ray retrying a task, a stopped sweep killing its actors


def route_ray_retries(logger: logging.Logger) -> None:
    """Ray's driver prints what its raylets publish to stdout whatever `log_to_driver` says; the
    notices of a task it retries (as when a stopped sweep lets its scoring actors go) go to
    `logger` instead, and every other error (a node lost, a worker crashed) stays in the terminal.
    Ray's listener thread looks `print_to_stdstream` up in its module at each message."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "routed", False):
        return

    def routed(data, *args, **kwargs):
        if isinstance(data, dict) and data.get("pid") == "raylet":
            lines = data.get("lines", [])
            notices = [line for line in lines if any(notice in line for notice in RAY_RETRY_NOTICES)]
            for line in notices:
                logger.warning("(raylet) %s", line)
            if notices and len(notices) == len(lines):
                return None
            data = {**data, "lines": [line for line in lines if line not in notices]}
        return printer(data, *args, **kwargs)

    routed.routed = True
    worker.print_to_stdstream = routed


def interrupted(plan, command: str, *, rescore: bool = False) -> int:
    """Say what the interrupted command finished and how to continue; the exit status."""

    found, _ = sweep_plan.own_checkpoints(plan)
    stale = TableWriter(plan.table_root).stale_keys(plan.scoring, plan.unrecorded_scoring)
    scored = len(found) - len(checkpoints.unscored(plan.table_root, found, stale=stale))
    if command == "score" and rescore:
        what, again = "scoring every checkpoint again was cut short", f"sweep score {plan.sweep_dir} --rescore"
    elif command == "score":
        what, again = f"{scored} of {len(found)} checkpoint(s) scored", f"sweep score {plan.sweep_dir}"
    else:
        try:
            networks = TableWriter(plan.table_root).read("networks")
        except (OSError, pyarrow.ArrowException) as exc:
            what = f"{damaged_table_message(exc, plan.sweep_dir)}; {scored} of {len(found)} checkpoint(s) scored"
        else:
            failed = set(networks.loc[networks["status"] == "failed", "bundle_id"]) if len(networks) else set()
            done = len(set(networks["bundle_id"]) - failed) if len(networks) else 0
            what = (f"{done} of {len(plan.bundles)} bundle(s) finished training"
                    + (f", {len(failed)} failed" if failed else "")
                    + f", {len(plan.bundles) - done - len(failed)} not (they continue from their last checkpoint"
                    + ("; failed ones are retried" if failed else "")
                    + f"); {scored} of {len(found)} checkpoint(s) scored")
        again = f"sweep resume {plan.sweep_dir}"
    print(f"sweep: interrupted ({interrupts.signal_name()}): {what}\nsweep: continue with: {again}",
          file=sys.stderr, flush=True)
    return interrupts.exit_code()


def check_reachable(address: str) -> None:
    """Answer within seconds when nothing listens at a cluster address, and before ray.init
    (`check_gcs`) when what listens is no GCS or refuses this machine's token: ray.init would retry
    for minutes. `auto` and localhost are resolved the way ray.init resolves them."""

    from ray._private.services import canonicalize_bootstrap_address

    if "://" in address:  # Ray Client (ray://) and other schemes connect their own way
        return
    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise UsageError(
            f"--address {address}: {exc} Start a cluster with `ray start --head`, pass its host:port, "
            "or leave --address out to run locally"
        ) from None
    if resolved is None:
        return
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"nothing answers at --address {address} ({resolved}: {exc}); start the head node there with "
            f"`ray start --head --port={port}`, check the host and port, or leave --address out to run locally"
        ) from None
    check_gcs(address, resolved)


GCS_PROBE_S = 30.0
# One try at a cluster's GCS, with the token ray.init would send (`--address auto` without
# RAY_ADDRESS sends a local one, as ray.init does for a cluster it finds on this machine), and its
# connection timeout cut to 3 s (about 14 s in all); exits 3 if refused without a token, 4 with
# one, 5 where nothing answers as a GCS.
GCS_PROBE = """
import os, sys
from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError, RpcError

if sys.argv[2] == "auto" and not os.environ.get("RAY_ADDRESS"):
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError:
    sys.exit(4 if os.environ.get("RAY_AUTH_MODE") == "token" else 3)
except RpcError as exc:
    sys.exit(5 if "Timed out" in str(exc) else 0)
except Exception:
    pass
"""


def check_gcs(address: str, resolved: str) -> None:
    """Name what ray.init would only retry on, silently and past Ctrl-C, for minutes: a cluster
    that refuses this machine's token, and a port that answers but not as a GCS (the dashboard's
    8265, say). The try runs in a process of its own, so that its C++ warnings stay off the
    terminal and it costs at most GCS_PROBE_S; anything else is left to ray.init."""
    try:
        done = subprocess.run([sys.executable, "-c", GCS_PROBE, resolved, address], capture_output=True,
                              timeout=GCS_PROBE_S, env={**os.environ, "RAY_py_gcs_connect_timeout_s": "3"})
    except subprocess.TimeoutExpired:
        return
    if done.returncode == 5:
        raise UsageError(f"something listens at --address {address} ({resolved}) but does not answer as a Ray "
                         "cluster: pass the head node's GCS port (`ray start --head` prints it: "
                         "`ray start --address='HOST:6379'`), not the dashboard's (8265) or another service's")
    if done.returncode in (3, 4):
        how = ("refused this machine's token (~/.ray/auth_token or RAY_AUTH_TOKEN): copy the head node's "
               "~/.ray/auth_token here" if done.returncode == 4 else
               "this command sent no token: run `export RAY_AUTH_MODE=token`, with the head node's "
               "~/.ray/auth_token copied to this machine's ~/.ray/auth_token (or in RAY_AUTH_TOKEN)")
        raise UsageError(f"the Ray cluster at --address {address} ({resolved}) uses token authentication, and "
                         f"{how}")


def cmd_run(args) -> int:
    plan, spec, bundles, card, problems = plan_run(args)
    # Its sweep.json would be replaced, and its tables mixed with this grid's. A dry run stays
    # offline: it looks only where the storage is a local folder.
    if not args.dry_run or "://" not in plan.sweep_dir:
        try:
            exists = sweep_plan.plan_exists(plan.sweep_dir)
        except (OSError, ValueError) as exc:
            if args.dry_run:
                exists = False
            else:
                raise UsageError(f"cannot reach the storage of {plan.sweep_dir}: {exc}; check its path, network "
                                 "and credentials") from None
        if exists:
            problems.append(f"{plan.sweep_dir} already holds a sweep; continue it with `sweep resume "
                            f"{plan.sweep_dir}`, or give this one another --name")
            if not args.dry_run:
                raise UsageError(problems[-1])
    if args.dry_run:
        problems += filter(None, [sweep_plan.local_write_problem(plan.storage)])
        print(plan_summary(spec, bundles, card, cpus=os.cpu_count()))
        for problem in problems:
            print(f"sweep: warning: a real run would stop here: {problem}", file=sys.stderr)
        return 0
    try:
        sweep_plan.ensure_writable(plan.storage)
    except PermissionError as exc:
        raise UsageError(str(exc)) from None
    print(f"[sweep] {plan.name}: {plan.networks} networks in {len(plan.bundles)} bundles -> {plan.sweep_dir}")
    for note in planner.plan_notes(spec, bundles, card):
        print(f"[sweep] note: {note}")
    from sweep.command import runner  # Ray: not for a refused spec or a dry run

    started = time.monotonic()
    results, code = guarded(plan, "run", args, lambda: runner.run(plan, score=not args.no_score), save=True)
    scored = not args.no_score and spec.resources.scoring_actors != 0  # 0: no scoring during the run
    return code if code is not None else finish(plan, results, started, report=not args.no_report, scored=scored)


def cmd_resume(args) -> int:
    from sweep.command import runner

    try:
        plan = sweep_plan.load_plan(args.path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None

    def resume():
        try:
            results = runner.resume(plan)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        if not interrupts.requested():
            restored, unrestored = runner.restore_network_rows(plan)
            if restored:
                print(f"[sweep] wrote the networks file of {restored} finished bundle(s) again, from their end "
                      "checkpoints")
            for failure in unrestored:
                print(f"sweep: could not write a networks file again from its end checkpoint: {failure}; copy it "
                      "from the sweep's storage if it is there", file=sys.stderr)
                lost.append(failure)
            summary = runner.score(plan, runner.scoring_pool_kwargs(plan)["settings"])
            if summary["scored"]:  # the run's own scoring has printed its count
                print(f"[sweep] scored {summary['scored']} checkpoint(s) left unscored, failed or scored with "
                      "other settings")
            for failure in summary["failures"]:
                print(f"sweep: scoring failed: {failure}", file=sys.stderr)
        return results

    started, lost = time.monotonic(), []
    results, code = guarded(plan, "resume", args, resume)
    if code is not None:
        return code
    return max(finish(plan, results, started, report=not args.no_report), 1 if lost else 0)


def guarded(plan, command: str, args, body, *, rescore: bool = False, save: bool = False):
    """`body()` with the sweep's lock held, Ray started (its own messages to sweep.log unless
    --verbose) and interrupts caught: (its result, None), or (None, the exit status) when a
    signal stopped it, having said what finished and how to continue (`rescore`: a `sweep score`
    of every checkpoint). With `save`, the plan (a new sweep's, or new scoring settings) is written
    with the lock held, before Ray starts, so that a command stopped while Ray starts continues from
    it; if Ray cannot start, the folder's sweep.json is put back as it was (a new sweep's removed, so
    that a plain rerun may take the name)."""
    if args.address and not ray_started():
        check_reachable(args.address)  # before the lock and the log file: a mistyped address leaves no sweep folder
    try:
        with locks.holding(plan.sweep_dir, command):
            if save:
                before = sweep_plan.plan_bytes(plan.sweep_dir)
                sweep_plan.save_plan(plan)
            own_ray = not ray_started()
            with interrupts.catching() as restore:  # from before Ray starts: it takes seconds
                try:
                    if not interrupts.requested():  # one recorded while the command loaded
                        start_ray(args.address, ray_log_file(plan, args.verbose))
                except SystemExit:  # ray.init's first step installs a SIGTERM handler that exits
                    interrupts.stopped_by(signal.SIGTERM)
                except KeyboardInterrupt:
                    pass
                except Exception:
                    if save:
                        sweep_plan.put_back_plan(plan.sweep_dir, before)
                    raise
                interrupts.install()  # over ray.init's own SIGTERM handler
                if args.address and own_ray and not interrupts.requested():
                    from sweep.command import runner

                    # score and resume's catch-up start an actor whatever scoring_actors says
                    scoring = command != "run" or (not args.no_score and plan.resources["scoring_actors"] != 0)
                    for problem in runner.unplaceable(plan, trials=command != "score", scoring=scoring):
                        print(f"sweep: warning: {problem}", file=sys.stderr, flush=True)
                try:
                    result = None if interrupts.requested() else body()
                except KeyboardInterrupt:
                    result = None
                if not interrupts.requested():
                    if own_ray:
                        restore.update(interrupts.when_done(
                            f"after its work was done (the tables are written); `sweep report {plan.sweep_dir}` "
                            "writes the report"))
                    return result, None
                if not own_ray:  # an embedding program's process and Ray: it decides what comes next
                    return None, interrupted(plan, command, rescore=rescore)
                interrupts.settle()
                code = interrupted(plan, command, rescore=rescore)
                # now, not at exit, where a further signal would meet Ray's handler mid-shutdown
                import ray

                ray.shutdown()
                return None, code
    except locks.SweepLocked as exc:
        raise UsageError(str(exc)) from None


def finish(plan, results, started: float, *, report: bool, scored: bool = True) -> int:
    """Say how the sweep ended, then report; exit 1 when a bundle failed, a checkpoint was left
    unscored or has a network whose scoring failed, or the networks table cannot be read, 2 when
    only the report could not be made."""
    errors = sum(1 for r in results if r.error is not None)
    print(f"[sweep] finished in {time.monotonic() - started:.0f}s")
    state = scoring_state(plan)
    try:
        print(describe(plan, state))
        damaged = False
    except (OSError, pyarrow.ArrowException) as exc:
        print(f"sweep: error: {damaged_table_message(exc, plan.sweep_dir)}", file=sys.stderr)
        damaged = True
    if errors:
        print(f"[sweep] {errors} bundle(s) failed after retries (their networks are recorded as failed where the "
              f"storage allowed it); retry them with: sweep resume {plan.sweep_dir}", file=sys.stderr)
    waiting = state.waiting if scored else []
    failed = len(state.failed) if scored else 0
    if waiting:
        print(f"[sweep] {len(waiting)} checkpoint(s) could not be scored (the storage did not answer, their scoring "
              f"was cut short, or they are damaged: see the messages above); score them with: sweep score "
              f"{plan.sweep_dir}", file=sys.stderr)
    if failed:
        print(f"[sweep] {failed} checkpoint(s) have networks whose scoring failed (the scores table's status and "
              f"message columns say why); score them again with: sweep score {plan.sweep_dir}", file=sys.stderr)
    code = 1 if errors or waiting or failed or damaged or state.foreign else 0  # describe named the foreign ones
    if report:
        try:
            _report(plan.sweep_dir, bootstrap=True)
        except UsageError as exc:
            print(f"sweep: error: the report could not be made: {exc}", file=sys.stderr)
            return code or 2
    return code


def cmd_status(args) -> int:
    try:
        plan = sweep_plan.load_plan(args.path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    try:
        print(describe(plan))
    except (OSError, pyarrow.ArrowException) as exc:
        raise UsageError(damaged_table_message(exc, args.path)) from None
    return 0


def damaged_table_message(exc: Exception, path: str) -> str:
    """Our writes are atomic, so an unreadable table file was cut short or altered outside the sweep."""
    return (
        f"a table file cannot be read: {str(exc).rstrip('.')}. Copy it again if it came from another "
        f"storage; otherwise delete it and run `sweep resume {path}`, which writes it again from the "
        "checkpoints (a networks file from its bundle's end checkpoint; a scores file by scoring its checkpoint "
        "again, which writes its points, trajectories and slices files too: delete a damaged one of those "
        "with the scores file of the same name)"
    )


def cmd_score(args) -> int:
    from sweep.command import runner

    try:
        plan = sweep_plan.load_plan(args.path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    settings = ScoringSettings.from_dict(plan.scoring)
    overrides = {}
    if args.points is not None:
        # train points too, where the sweep scores them (0: no train split, kept)
        overrides.update(points=args.points, train_points=args.points if settings.train_points else 0)
    if args.metrics:
        overrides["metrics"] = METRICS if args.metrics == ["all"] else tuple(args.metrics)
    try:
        settings = settings.replace(**overrides) if overrides else settings
    except ValueError as exc:  # named by the spec key it sets, which the user gave as a flag
        flags = " ".join(f"--{key}" for key in ("points", "metrics") if key in overrides)
        raise UsageError(f"{flags}: {exc}") from None
    datasets = [BundleConfig.from_dict(b).dataset for b in plan.bundles]
    for note in planner.points_notes(settings.points, settings.train_points, datasets):
        print(f"[sweep] note: {note}")

    # New settings are saved before Ray starts (by `guarded`), so that whatever scores this sweep
    # next (a resume, a later `sweep score`) uses them: every checkpoint scored with the old ones
    # is then scored again, and one cut short is taken up by a plain `sweep score`.
    changes = differing_settings(recorded_settings(plan.scoring), dataclasses.asdict(settings))
    if changes:
        plan = dataclasses.replace(plan, scoring=dataclasses.asdict(settings),
                                   unrecorded_scoring=plan.unrecorded_scoring or plan.scoring)

    def score():
        if changes:
            print(f"[sweep] scoring settings saved to {plan.sweep_dir}/{sweep_plan.SWEEP_FILE}: "
                  + ", ".join(setting_change(name, now, then, "was") for name, (then, now) in changes.items()))
        elif overrides:
            print("[sweep] the scoring settings given are the sweep's already")
        try:
            return runner.score(plan, settings, rescore=args.rescore)
        except Exception:
            if changes:  # saved, and some checkpoints may still hold scores of the old settings
                print(f"sweep: the new scoring settings are saved; score the checkpoints that still hold scores of "
                      f"the old ones with: sweep score {plan.sweep_dir}", file=sys.stderr)
            raise

    summary, code = guarded(plan, "score", args, score, rescore=args.rescore, save=bool(changes))
    if code is not None:
        return code
    print(f"[sweep] scored {summary['scored']} of {summary['checkpoints']} checkpoint(s) -> {plan.table_root}")
    left = TableWriter(plan.table_root).stale_keys(plan.scoring, plan.unrecorded_scoring)
    if summary["checkpoints"] and not summary["scored"] and not left:
        print(f"[sweep] every checkpoint has scores of these settings already; `sweep score {plan.sweep_dir} "
              "--rescore` scores them again")
    for failure in summary["failures"]:
        print(f"sweep: scoring failed: {failure}", file=sys.stderr)
    if left:
        print(f"sweep: {stale_without_checkpoints(plan, left)}", file=sys.stderr)
    if summary["foreign"]:
        print(f"sweep: {sweep_plan.foreign_message(summary['foreign'])}", file=sys.stderr)
    return 1 if summary["failures"] or left or summary["foreign"] else 0


def cmd_report(args) -> int:
    try:
        plan = sweep_plan.load_plan(args.path)  # a sweep's folder, before anything is written into it
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    try:
        trained = len(TableWriter(plan.table_root).read("networks"))
    except (OSError, pyarrow.ArrowException) as exc:
        raise UsageError(damaged_table_message(exc, plan.sweep_dir)) from None
    if not trained:
        raise UsageError(f"no bundle of {args.path} has finished training yet, so there is nothing to report; "
                         f"`sweep status {args.path}` says where it stands, `sweep resume {args.path}` continues it")
    _report(sweep_plan.resolve_storage(args.path), bootstrap=not args.no_bootstrap,
            include_unconverged=args.include_unconverged)
    return 0


def _report(sweep_dir: str, *, bootstrap: bool, include_unconverged: bool = False) -> None:
    from analysis.report import build_report, format_correlation_table

    try:
        report = build_report(sweep_dir, bootstrap=bootstrap, include_unconverged=include_unconverged)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(format_correlation_table(report.correlations))
    for note in report.notes:
        print(f"[sweep] {note}")
    reasons = report.left_out["reason"].value_counts()
    if len(reasons):
        print(f"[sweep] left out of the statistics: {len(report.left_out)} network(s) ("
              + ", ".join(f"{n} {r}" for r, n in reasons.items()) + "); listed in the report")
    print(f"[sweep] report: {report.path}")
