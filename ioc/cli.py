"""The `ndflow` command."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import logging
import signal
import sys
import time
from pathlib import Path

from . import __version__, registry
from .config import ConfigError, load_config
from .stop_signals import cancel_on_stop_signals


class OneLineErrors(logging.Filter):
    """caproto logs a rejected CA put with a full traceback; a bad put is the client's mistake,
    so it becomes one line naming the cause."""

    _beacon_warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("caproto") and "beacon" in str(record.msg):
            # Nobody listening on the beacon port (no caRepeater) is normal on a closed host:
            # clients still find the IOC by search. Said once, and not as a warning.
            if OneLineErrors._beacon_warned:
                return False
            OneLineErrors._beacon_warned = True
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = ("cannot send CA beacons (no CA repeater listening; normal without "
                          "caRepeater: clients find the IOC by search); not repeated")
            record.args, record.exc_info, record.exc_text = (), None, None
            return True
        if record.name.startswith("caproto") and "Invalid write request" in str(record.msg):
            return False  # our channel has already logged the refusal with the PV name
        if record.name.startswith("caproto") and record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OneLineErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("caproto").setLevel(max(logging.WARNING, root.level))


class Interrupted(KeyboardInterrupt):
    """SIGTERM before the event loop took the stop signals (Ctrl-C raises KeyboardInterrupt)."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """The command line. A stop (Ctrl-C, SIGTERM) while the IOC is still starting (algorithms
    load for seconds), or during a replay, ends it with one line, what it had started stopped,
    and the shell's status for the signal; once it serves, a stop is the orderly shutdown
    (`_serve`), status 0."""
    # Both are stop requests from the start, whatever was inherited (a shell starts background
    # jobs, and pytest-xdist its workers' children, with SIGINT ignored); the event loop takes
    # both over when it runs, as it always did.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"ndflow: stopped by {signal.Signals(signum).name} before it served "
              "(everything it had started is stopped)", file=sys.stderr)
        return 128 + signum


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="ndflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ndflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve an IOC (the simulated detector if no config)")
    run.add_argument("config", nargs="?", help="YAML config file")
    run.add_argument("--prefix", help="override the config's PV prefix (P macro)")
    run.add_argument("--list-pvs", action="store_true", help="print every PV name and exit")
    run.add_argument("--screens", metavar="DIR",
                     help="write the Phoebus screens here at start (overrides screens_dir; "
                          "'' writes none)")
    screens = sub.add_parser("screens", help="write the Phoebus .bob screens of an IOC and exit")
    screens.add_argument("config", nargs="?", help="YAML config file")
    screens.add_argument("--out", required=True, metavar="DIR", help="folder for the .bob files")
    replay = sub.add_parser("replay", help="push archived files through the IOC's plugins, "
                                           "algorithms included, with no Channel Access")
    replay.add_argument("config", help="YAML config file (with a file-reading driver: fits)")
    replay.add_argument("files", nargs="+", help="files, in the order to replay them")
    replay.add_argument("--table", metavar="PATH",
                        help="write the algorithms' outputs per file here (.csv or .h5)")
    replay.add_argument("--no-progress", action="store_true",
                        help="no progress bar (on a terminal) or progress lines (otherwise)")
    for p in (run, screens, replay):  # replay: its summary says what happened
        p.add_argument("--log-level", default="WARNING" if p is replay else "INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "replay":
        return _replay(args)
    try:
        config, lines = load_config(args.config)
        if getattr(args, "prefix", None) is not None:
            config.prefix = args.prefix
        folder = args.out if args.command == "screens" else args.screens
        if folder is not None:
            config.screens_dir = str(Path(folder).expanduser().resolve()) if folder else ""
        from .server import IOC
        serving = args.command == "run" and not args.list_pvs
        if serving and config.cluster is not None:
            from . import cluster  # mpi4py only with a cluster section, under a launcher
            if cluster.launched_size() > 1:
                return cluster.run(config, lines, lambda t: IOC(config, lines, transports=t),
                                   write_screens)
        ioc = _build(lambda: IOC(config, lines, transports=None if serving else []))
    except ConfigError as exc:
        print(f"ndflow: {exc}", file=sys.stderr)
        return 2
    if args.command == "screens" or args.list_pvs:
        try:  # algorithm children were started to learn their PVs: always shut down
            if args.command == "screens":
                return 0 if write_screens(ioc) else 1
            print("\n".join(ioc.pv_names()))
            return 0
        finally:
            ioc.shutdown()
    try:
        write_screens(ioc)
    except BaseException:  # a stop while writing them: the children started go too
        ioc.shutdown()
        raise
    return asyncio.run(_serve(ioc))


def _build(make):  # type: ignore[no-untyped-def]
    """Build the IOC with the cyclic garbage collector paused, then freeze what was built.

    Building the default IOC allocates ~400,000 objects that live as long as the IOC (every PV's
    channels and endpoints); the collector's passes over them took ~60% of the build (6.7 s
    against 2.4 s without). Frozen (`gc.freeze`), they are no longer traversed by later full
    collections either, so those do not pause the event loop for a scan of every PV."""
    gc.disable()
    try:
        return make()
    finally:
        gc.freeze()
        gc.enable()


def write_screens(ioc) -> bool:
    """Write every screen into the configured folder; a failure is one log line, not a stop."""
    folder = ioc.site.screens_dir
    if folder is None:
        return True
    log = logging.getLogger("ndflow.screens")
    try:
        paths = registry.load("screens", "bob")(ioc.components, folder)
    except OSError as exc:
        log.error("cannot write the screens in %s: %s", folder, exc.strerror or exc)
        return False
    except registry.UnknownComponent as exc:
        log.error("cannot write the screens: %s", exc)
        return False
    log.info("wrote %d screen files to %s; open with: phoebus -resource '%s?P=%s'",
             len(paths), folder, folder / "ndflow.bob", ioc.prefix)
    return True


def _replay(args: argparse.Namespace) -> int:
    from .replay import ReplayError, replay

    files = [Path(f) for f in args.files]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        print(f"ndflow: no such file: {', '.join(absent[:5])}", file=sys.stderr)
        return 2
    table = Path(args.table) if args.table else None
    if table is not None and table.suffix.lower() not in (".csv", ".h5", ".hdf5"):
        print(f"ndflow: --table {table}: give a .csv or .h5 file", file=sys.stderr)
        return 2
    show = None if args.no_progress else _progress_bar if sys.stderr.isatty() else \
        ProgressLines()
    try:
        config, lines = load_config(args.config)
        summary = replay(config, files, lines, table, show)
    except (ConfigError, ReplayError) as exc:
        print(f"ndflow: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ndflow: cannot write {exc.filename or table}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    if show is _progress_bar:
        print(file=sys.stderr)
    print(summary.text() + (f"; table: {table}" if table else ""))
    return 0 if summary.frames == summary.files else 1


def _progress_bar(done: int, total: int, path: Path) -> None:
    width = 30
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {path.name[-40:]:40}",
          end="", file=sys.stderr, flush=True)


class ProgressLines:
    """Replay's progress where no bar can redraw (a log, a pipe, CI): a line after the first
    file, then at most one every `interval` seconds, each a complete line."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.began = time.monotonic()
        self.due = 0.0  # the first file is reported at once

    def __call__(self, done: int, total: int, path: Path) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.interval
        print(f"ndflow replay: {done}/{total} files after {now - self.began:.0f} s, "
              f"last {path.name}", file=sys.stderr, flush=True)


async def _serve(ioc) -> int:
    release = cancel_on_stop_signals(asyncio.get_running_loop(), asyncio.current_task())
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck IOC is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        await ioc.run()
    except asyncio.CancelledError:
        logging.getLogger("ndflow").info("shut down")
    finally:
        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
