"""``omnizip stream``: the live pipeline (camera, microphone, file, URL or synthetic source)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import (
    add_config_arguments,
    add_model_arguments,
    int_range,
    positive_float,
    resolve_config,
    tiny_notice,
)

HELP = "watch and listen to a live source and answer questions about it"
EXAMPLE = 'omnizip stream --source file:lecture.mp4 --model tiny --ask "What is on the slide?" --duration 60'


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Source, config and run flags shared by ``stream`` and ``serve-mqtt``."""
    parser.add_argument("--source", default="synthetic",
                        help="camera | camera+mic | mic | file:PATH | URL (rtsp://, http://, udp://, tcp://) | "
                             "synthetic[:seed=N,...] (default %(default)s)")
    parser.add_argument("--mic", default=None, help="microphone device (index or name) for camera+mic / mic")
    parser.add_argument("--camera-size", default=None, help="camera capture size, e.g. 640x480")
    add_model_arguments(parser)
    add_config_arguments(parser)
    parser.add_argument("--duration", type=positive_float, default=None, help="stop after this many seconds of stream (default: when the source ends)")
    parser.add_argument("--no-realtime", action="store_true", help="replay files/synthetic as fast as possible")
    parser.add_argument("--loop", action="store_true", help="replay a file forever")
    parser.add_argument("--max-side", type=int_range(16, 8192), default=640,
                        help="scale frames at decode to this longer side")
    parser.add_argument("--status-interval", type=positive_float, default=2.0, help="seconds between status lines")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip stream``."""
    add_source_arguments(parser)
    parser.add_argument("--ask", action="append", default=[], metavar="QUESTION",
                        help="a scripted question (repeatable), asked every --ask-every seconds of stream")
    parser.add_argument("--ask-every", type=positive_float, default=5.0, help="stream seconds between scripted questions")
    parser.add_argument("--watch", action="append", default=[], metavar="QUESTION",
                        help="a standing yes/no question (repeatable): an alert is printed when it becomes true "
                             "(threshold 0.5; settings per question in a server file's watches:)")
    parser.add_argument("--interactive", dest="interactive", action="store_true", default=None,
                        help="answer questions typed on stdin (default when stdin is a terminal)")
    parser.add_argument("--no-interactive", dest="interactive", action="store_false",
                        help="do not read questions from stdin (default when stdin is not a terminal)")


def build_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """StreamConfig from --config, key=value overrides and the model flags; bad input is a UserError."""
    config = resolve_config(args)
    try:
        config.check_stream()  # before the model loads; the window length is checked against the loaded model
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return config


def run_with_errors(config, options) -> object:  # type: ignore[no-untyped-def]
    """Run the app; turn the user-facing failures into UserError (exit 2).

    Ctrl-C exits 130 and SIGTERM exits 0, both after the run has closed what it opened (see
    :func:`~omnizip_stream.app.run_stream`); a SIGTERM before the run starts (while importing) exits 0 too.
    """
    stop_on_sigterm()
    from omnizip_stream.app import run_stream

    return run_app(lambda: run_stream(config, options))


def run_app(main: Callable[[], Coroutine[Any, Any, Any]], user_errors: tuple[type[BaseException], ...] = ()) -> Any:
    """``asyncio.run(main())`` with the exits of a live run (``stream``, ``serve-mqtt``, ``serve``).

    Source, model-load, cache and broker failures (and ``user_errors``) become UserError (exit 2);
    Ctrl-C exits 130; a result whose ``terminated`` is set (SIGTERM) exits 0.
    """
    stop_on_sigterm()
    from omnizip.adapters.base import ModelLoadError
    from omnizip_stream.config import StreamConfigError
    from omnizip_stream.kv import CacheFullError
    from omnizip_stream.sources import SourceError

    try:
        from omnizip_stream.query.broker import BrokerUnavailableError
        from omnizip_stream.query.connection import BrokerRefusedError
        mqtt_errors: tuple[type[BaseException], ...] = (BrokerUnavailableError, BrokerRefusedError)
    except ImportError:  # the [mqtt] extra is not installed
        mqtt_errors = ()
    errors: tuple[type[BaseException], ...] = (SourceError, ModelLoadError, CacheFullError, StreamConfigError,
                                               *mqtt_errors, *user_errors)
    try:
        result = asyncio.run(main())
    except errors as exc:
        raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except KeyboardInterrupt:  # Ctrl-C (once or twice): the run was cancelled and its contexts exited
        exit_now(130, "interrupted")
    if result.terminated:  # SIGTERM: stopped gracefully, the summary is printed
        exit_now(0)
    return result


def stop_on_sigterm() -> None:
    """Until the run installs its graceful handler, SIGTERM exits 0 at once (nothing is open yet)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _terminated_early)


def _terminated_early(signum: int, frame: object) -> None:
    """SIGTERM before the run has started: nothing to close yet."""
    exit_now(0, "stopped (SIGTERM)")


def exit_now(code: int, message: str | None = None) -> NoReturn:
    """End the process at once, after the run's own cleanup.

    Used on Ctrl-C and SIGTERM, where the stream, the MQTT server and any embedded broker have
    already been closed: the interpreter's own teardown (torch, transformers) takes seconds on a
    busy machine, and Ctrl-C must stop within one.
    """
    if message:
        print(("\n" if sys.stderr.isatty() else "") + message, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run(args: argparse.Namespace) -> int:
    """Run the live pipeline; exit 0 at the end of the stream, 2 for bad input."""
    from omnizip_stream.app import RunOptions

    stop_on_sigterm()
    config = build_config(args)
    interactive = sys.stdin.isatty() if args.interactive is None else args.interactive
    options = RunOptions(
        source=args.source, mic=args.mic, camera_size=args.camera_size, duration_s=args.duration,
        realtime=not args.no_realtime, loop=args.loop, max_side=args.max_side, questions=list(args.ask),
        ask_every_s=args.ask_every, interactive=interactive, status_interval_s=args.status_interval,
    )
    from omnizip_stream.watch.spec import MAX_WATCHES_PER_STREAM, WatchError, watch_spec_from_mapping

    if len(args.watch) > MAX_WATCHES_PER_STREAM:
        raise UserError(f"--watch: {len(args.watch)} standing questions; at most {MAX_WATCHES_PER_STREAM}")
    for question in args.watch:
        try:
            options.watches.append(watch_spec_from_mapping(question))
        except WatchError as exc:
            raise UserError(f"--watch {question[:40]!r}: {exc}") from None
    notice = tiny_notice(config.model)
    if notice:
        print(notice, file=sys.stderr)
    run_with_errors(config, options)
    return 0
