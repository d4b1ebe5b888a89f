"""The ``omnizip`` console script: one subcommand per module, imported only when used.

Each subcommand module defines ``HELP`` (one line), ``EXAMPLE`` (a command line shown at the end of its
``--help``), ``add_arguments(parser)`` and ``run(args) -> int``. A :class:`UserError` raised anywhere
below, and every usage error, becomes a one-line message and exit code 2; every other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

# name -> module; adding a subcommand is one line here plus its module.
SUBCOMMANDS: dict[str, str] = {
    "demo": "omnizip_stream.cli.demo",
    "infer": "omnizip_stream.cli.infer",
    "stream": "omnizip_stream.cli.stream",
    "serve-mqtt": "omnizip_stream.cli.serve_mqtt",
    "serve": "omnizip_stream.cli.serve",
    "bench": "omnizip_stream.cli.bench",
    "eval": "omnizip_stream.cli.eval",
}


class UserError(Exception):
    """A mistake in the user's input (bad file, bad flag value ...): one line, exit code 2."""


def _available_subcommands() -> dict[str, str]:
    """Subcommands whose module exists in this checkout."""
    out = {}
    for name, module in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = module
    return out


def package_version() -> str:
    """The installed ``omnizip-stream`` version (the source tree's when it is not installed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("omnizip-stream")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.1.0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand modules are imported to add their arguments."""
    from omnizip_stream.cli._common import HelpFormatter, Parser

    parser = Parser(
        prog="omnizip",
        description="OmniZip-Stream: audio-guided token compression for omnimodal LLMs on live A/V.",
        epilog="example:\n  omnizip demo\n  omnizip stream --source camera+mic --config qwen2.5-omni-7b",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _available_subcommands().items():
        module = importlib.import_module(module_name)
        example = getattr(module, "EXAMPLE", None)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter,
                           epilog=f"example:\n  {example}" if example else None)
        # -v also after the subcommand (SUPPRESS: it does not reset a -v given before it)
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more logging (-vv for debug)")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omnizip`` script; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (exit 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"omnizip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_main() -> NoReturn:
    """The installed ``omnizip`` script (and ``python -m omnizip_stream.cli``): :func:`main`, then exit at once.

    Everything the run opened is closed when :func:`main` returns. Skipping the interpreter's teardown
    saves seconds (torch, transformers) and keeps C++ thread pools of the libraries from aborting the
    process ("terminate called without an active exception") while a library thread winds down.
    """
    from omnizip_stream.cli.stream import exit_now

    exit_now(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
