"""The `proxstudy` command: a thin layer over the Python API (study.runner, status, export,
reader; workers.train_command; dashboards).

Every expected failure (bad YAML, unknown key, bad value, unreachable storage, missing data,
unknown study, changed search space) is a :class:`~proxstudy.errors.ProxstudyError` and ends as
ONE line ``proxstudy: error: ...`` on stderr and exit status 2 -- never a traceback. Each
subcommand imports its own part of the product when it runs: `run` needs Ray and torch, `train`
torch, `report` and `dashboard` Plotly and Dash, while `status`, `list` and `export` need none
of them and stay quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from proxstudy.errors import ProxstudyError, UsageError

EXIT_USAGE = 2


def _error(message: str) -> int:
    from proxstudy.study.redaction import redact_text

    text = redact_text(" ".join(str(message).split("\n")[0].split()))  # one line, no password
    print(f"proxstudy: error: {text}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _storage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URL", default=None,
                        help="SQLAlchemy URL of the Optuna storage (default: $PROXSTUDY_STORAGE, "
                             "else sqlite:///proxstudy.db in the working directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxstudy",
        description="Hyperparameter-robustness studies of ProxProp vs BackProp on Ray Tune + Optuna.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run or resume the sweep of a search-space YAML")
    run.add_argument("space", metavar="SPACE.yaml")
    _storage_arg(run)
    run.add_argument("--study-name", default=None, help="study name (default: the file's `study`)")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join this Ray cluster (HOST:PORT of the head) instead of starting a local Ray")
    run.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                     help="at most N trials at once (default: as many as the resources allow)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="F")
    run.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="F")
    run.add_argument("--max-retries", type=int, default=2, metavar="N",
                     help="retries of a trial whose worker or node died (default 2)")
    run.add_argument("--device", default="auto", help="device of every trial: auto|cpu|cuda|cuda:N")
    run.add_argument("--fuse", default="auto", metavar="K|auto",
                     help="train up to K points of the grid together as one fused trial (default auto: K "
                          "from the model's memory and the device; 1: one point per trial)")
    run.add_argument("--wait-for-resources", action="store_true",
                     help="an autoscaling cluster: wait for nodes that fit a trial instead of refusing")
    run.add_argument("--force-new", action="store_true",
                     help="the study exists with another search space: start a new, suffixed study")
    run.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray's own output")
    run.add_argument("--no-publish", action="store_true",
                     help="do not store the robustness figures and verdict in the study for optuna-dashboard")

    status = sub.add_parser("status", help="trials done / running / diverged / failed / left")
    status.add_argument("study", nargs="?", default=None, metavar="STUDY")
    _storage_arg(status)

    lst = sub.add_parser("list", help="the studies in the storage")
    _storage_arg(lst)

    export = sub.add_parser("export", help="the best and the most robust configuration of each method")
    export.add_argument("study", metavar="STUDY")
    _storage_arg(export)
    export.add_argument("--pick", choices=("best", "robust", "both"), default="both",
                        help="which configuration(s) of each method to write (default: both)")
    export.add_argument("--format", choices=("yaml", "json"), default=None,
                        help="default: from --out's suffix, else yaml")
    export.add_argument("--out", default=None, metavar="FILE", help="write here (default: stdout)")

    summary = sub.add_parser("summary", help="robustness numbers per method, with intervals")
    summary.add_argument("study", metavar="STUDY")
    _storage_arg(summary)
    summary.add_argument("--format", choices=("table", "json"), default="table")
    summary.add_argument("--delta", type=float, default=None, metavar="D",
                         help="a point is trained when its progress is >= 1 - D (default 0.1)")

    compare = sub.add_parser("compare", help="several studies' robustness numbers side by side")
    compare.add_argument("studies", nargs="+", metavar="STUDY")
    compare.add_argument("--storage", metavar="URL", action="append", default=None,
                         help="the studies' storage (default as for the other commands); given once per "
                              "STUDY, in order, the studies may live in different storages")
    compare.add_argument("--format", choices=("table", "json"), default="table")
    compare.add_argument("--delta", type=float, default=None, metavar="D",
                         help="a point is trained when its progress is >= 1 - D (default 0.1)")

    train = sub.add_parser("train", help="one run of a trial config or an export file")
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--method", default=None, help="the method of an export file to run")
    train.add_argument("--pick", choices=("best", "robust"), default=None,
                       help="which configuration of an export file to run (needed when it has both)")
    train.add_argument("--device", default=None, help="auto|cpu|cuda|cuda:N")

    report = sub.add_parser("report", help="self-contained HTML report of a study")
    report.add_argument("study", metavar="STUDY")
    _storage_arg(report)
    report.add_argument("--out", required=True, metavar="FILE")

    publish = sub.add_parser("publish", help="store the robustness figures and verdict in the study "
                                             "(shown by optuna-dashboard)")
    publish.add_argument("study", metavar="STUDY")
    _storage_arg(publish)

    dash = sub.add_parser("dashboard", help="the web dashboard")
    _storage_arg(dash)
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8050)
    dash.add_argument("--allow-remote", action="store_true",
                      help="allow a --host other than localhost (the dashboard has no login)")
    dash.add_argument("--threads", type=int, default=8, metavar="N",
                      help="worker threads of the waitress server (default 8; requests beyond wait)")
    dash.add_argument("--debug", action="store_true",
                      help="serve with Flask's development server and debugger instead (localhost only)")
    return parser


# ------------------------------------------------------------------------------------------
# subcommands


def _readable_storage(url: str | None) -> str:
    """The storage URL of a command that only reads: it must exist; Optuna's log quietened."""
    import optuna

    from proxstudy.study.storage import check_storage, resolve_storage_url

    resolved = resolve_storage_url(url)
    check_storage(resolved, must_exist=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return resolved


def _out_directory_exists(out: str) -> None:
    directory = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise UsageError(f"--out {out}: is a directory; give the name of the file to write")
    if not os.path.isdir(directory):
        raise UsageError(f"--out {out}: directory {directory} does not exist")


def _fuse_option(text: str) -> int | None:
    """--fuse: an integer K >= 1, or auto (None)."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--fuse must be an integer >= 1 or auto, got {text!r}") from None
    if value < 1:
        raise UsageError(f"--fuse must be an integer >= 1 or auto, got {text!r}")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    from proxstudy.study.runner import SweepOptions, run_sweep

    options = SweepOptions(
        storage=args.storage,
        study_name=args.study_name,
        ray_address=args.ray_address,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        force_new=args.force_new,
        progress=not args.no_progress,
        verbose=args.verbose,
        max_retries=args.max_retries,
        device=args.device,
        fuse=_fuse_option(args.fuse),
        wait_for_resources=args.wait_for_resources,
    )
    summary = run_sweep(args.space, options)
    shown = summary.storage
    done = summary.completed + summary.diverged + summary.failed
    print(f"study {summary.study_name}: {done}/{summary.total} done ({summary.completed} completed, "
          f"{summary.diverged} diverged, {summary.failed} failed), {summary.left} left; "
          f"this run: {summary.ran} trial(s), {summary.skipped} already finished"
          + (f", {summary.closed_interrupted} interrupted trial(s) closed and re-run"
             if summary.closed_interrupted else ""))
    if summary.created is False and summary.ran == 0 and summary.left == 0:
        print("nothing left to run")
    if summary.left:
        print(f"{summary.left} trial(s) left: run the same command again to finish the study")
    # Always the redacted URL: it says where the study is; a password must be typed again.
    storage_opt = f" --storage '{shown}'"
    print("see the results" + (" (password hidden)" if "***" in storage_opt else "") + ":")
    print(f"  proxstudy dashboard{storage_opt}")
    print(f"  proxstudy report {summary.study_name}{storage_opt} --out report.html")
    print(f"  proxstudy export {summary.study_name}{storage_opt} --out export.yaml")
    if not args.no_publish:
        _publish_after_run(args.storage, summary.study_name)
    return 0 if summary.left == 0 else 1


def _publish_after_run(storage: str | None, study_name: str) -> None:
    """`run` publishes its analysis for optuna-dashboard; a failure there is reported, and the
    run's own result (its exit status) stands."""
    from proxstudy.dashboards.publish import publish
    from proxstudy.study.storage import redact, resolve_storage_url, scrub_secrets

    url = resolve_storage_url(storage)
    try:
        published = publish(url, study_name)
    except Exception as exc:  # the sweep's results are stored; publishing is an extra
        print(f"proxstudy: publish {study_name}: not published ({type(exc).__name__}: "
              f"{scrub_secrets(str(exc), url)[:300]}); run `proxstudy publish {study_name} "
              f"--storage '{redact(url)}'` to retry", file=sys.stderr)
        return
    print(f"published {len(published.graph_ids)} figures and the verdict note for optuna-dashboard: "
          f"optuna-dashboard '{redact(url)}'")


def _cmd_status(args: argparse.Namespace) -> int:
    from proxstudy.study.status import all_study_statuses, format_status, study_status

    url = _readable_storage(args.storage)
    statuses = [study_status(url, args.study)] if args.study else all_study_statuses(url)
    if not statuses:
        print("no studies")
        return 0
    print("\n\n".join(format_status(status) for status in statuses))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from proxstudy.study.status import all_study_statuses, format_list

    print(format_list(all_study_statuses(_readable_storage(args.storage))))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from proxstudy.dashboards.exported import study_export_document
    from proxstudy.study.export import write_export

    fmt = args.format
    if fmt is None:
        fmt = "json" if args.out and args.out.lower().endswith(".json") else "yaml"
    if args.out:
        _out_directory_exists(args.out)
    url = _readable_storage(args.storage)
    document = study_export_document(url, args.study, args.pick)
    write_export(document, fmt, args.out)
    if args.out:
        pick = "" if args.pick != "both" else " --pick best|robust"
        print(f"exported {len(document['methods'])} method(s) of {args.study} to {args.out}; "
              f"run one with: proxstudy train {args.out} --method NAME{pick}", file=sys.stderr)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    import json

    from proxstudy.dashboards.data import study_summary_data
    from proxstudy.dashboards.metrics import DEFAULT_DELTA, summary_document
    from proxstudy.dashboards.tables import summary_text

    delta = DEFAULT_DELTA if args.delta is None else args.delta
    if not 0.0 < delta < 1.0:
        raise UsageError(f"--delta {args.delta}: must be between 0 and 1 (exclusive)")
    data = study_summary_data(_readable_storage(args.storage), args.study, delta=delta)
    if args.format == "json":
        from proxstudy.dashboards.importance import log_params_of_document, study_importance

        importance = study_importance(data.metrics, log_params_of_document(data.space))
        shares = {name: found.shares for name, found in importance.items()}
        print(json.dumps(summary_document(data.metrics, args.study, data.objective, shares), indent=2))
    else:
        print(summary_text(data.metrics, args.study, data.objective))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from proxstudy.dashboards.compare import compare_document, compare_text, study_labels
    from proxstudy.dashboards.data import study_summary_data
    from proxstudy.dashboards.metrics import DEFAULT_DELTA, summary_document

    delta = DEFAULT_DELTA if args.delta is None else args.delta
    if not 0.0 < delta < 1.0:
        raise UsageError(f"--delta {args.delta}: must be between 0 and 1 (exclusive)")
    given = args.storage or [None]
    if len(given) not in (1, len(args.studies)):
        raise UsageError(f"--storage: given {len(given)} times for {len(args.studies)} studies; give it once "
                         "(every study in one storage) or once per STUDY, in the same order")
    urls = [_readable_storage(url) for url in given] * (len(args.studies) // len(given))
    studies = list(zip(args.studies, urls, strict=True))
    twice = sorted({name for name, url in studies if studies.count((name, url)) > 1})
    if twice:
        raise UsageError(f"STUDY {twice[0]}: named more than once for the same storage")
    labels = study_labels(studies)
    summaries = []
    for (name, url), label in zip(studies, labels, strict=True):
        data = study_summary_data(url, name, delta=delta)
        summaries.append(summary_document(data.metrics, label, data.objective))
    storages = {label: url for (_, url), label in zip(studies, labels, strict=True)}
    document = compare_document(summaries, storages=storages)
    print(json.dumps(document, indent=2) if args.format == "json" else compare_text(document))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from proxstudy.workers.train_command import train_main

    return int(train_main(args.config, method=args.method, device=args.device, pick=args.pick) or 0)


def _cmd_report(args: argparse.Namespace) -> int:
    from proxstudy.dashboards.report import write_report
    from proxstudy.study.reader import require_study

    url = _readable_storage(args.storage)
    _out_directory_exists(args.out)
    require_study(url, args.study)
    write_report(url, args.study, args.out)
    print(f"report written to {args.out}", file=sys.stderr)
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from proxstudy.dashboards.publish import publish
    from proxstudy.study.reader import require_study
    from proxstudy.study.storage import redact

    url = _readable_storage(args.storage)
    require_study(url, args.study)
    published = publish(url, args.study)
    print(f"study {args.study}: published {len(published.graph_ids)} figures and the verdict note"
          + (f" (removed {published.removed} figures of an earlier publish)" if published.removed else "")
          + f"; see them with: optuna-dashboard '{redact(url)}'")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from proxstudy.dashboards.app import run_dashboard

    url = _readable_storage(args.storage)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise UsageError(f"--host {args.host}: the dashboard has no login; "
                         "add --allow-remote to serve beyond localhost")
    _check_listen_address(args.host, args.port)
    try:
        run_dashboard(url, args.host, args.port, args.allow_remote, threads=args.threads, debug=args.debug)
    except ValueError as exc:  # an option out of range, named in the message
        raise UsageError(str(exc)) from None
    return 0


def _check_listen_address(host: str, port: int) -> None:
    """A port out of range or a host name that does not resolve fails before the server starts."""
    import socket

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 1 and 65535")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {host}: cannot be resolved to an address of this machine ({exc})") from None


def _is_database_error(exc: BaseException) -> bool:
    """A database driver's error as SQLAlchemy raises it (checked without importing it)."""
    return any(cls.__module__ == "sqlalchemy.exc" and cls.__name__ in ("OperationalError", "DatabaseError")
               for cls in type(exc).__mro__)


_COMMANDS = {
    "run": _cmd_run,
    "status": _cmd_status,
    "list": _cmd_list,
    "export": _cmd_export,
    "summary": _cmd_summary,
    "compare": _cmd_compare,
    "train": _cmd_train,
    "report": _cmd_report,
    "dashboard": _cmd_dashboard,
    "publish": _cmd_publish,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `proxstudy` script: runs the subcommand and exits with its status
    (0 ok, 1 some trials left or failed runs, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a usage line on bad arguments
    try:
        try:
            code = _COMMANDS[args.command](args)
        except ProxstudyError as exc:
            code = _error(str(exc))
        except OSError as exc:  # e.g. --out not writable
            code = _error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            # The storage failed under a command (damaged, gone away): the environment, not a bug.
            code = _error(f"storage: {type(exc).__name__}: {getattr(exc, 'orig', None) or exc}")
    except KeyboardInterrupt:
        print("proxstudy: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug, not the user's input: one line unless debugging
        if os.environ.get("PROXSTUDY_DEBUG"):
            raise
        from proxstudy.study.redaction import redact_text

        first = redact_text((str(exc).strip().splitlines() or [""])[0])
        print(f"proxstudy: internal error: {type(exc).__name__}: {first} "
              "(set PROXSTUDY_DEBUG=1 to see the traceback)", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
