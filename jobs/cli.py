"""The `omnipersona` command: personalize, demo, status, infer, delete.

It sits above the library (it imports `pipelines/`), never inside `omnipersona/`. Each command
lives in its own module under `jobs/` (`add_parser` + `run`); this file wires them together and
owns what every command shares: logging options, one-line errors, exit codes.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata

from jobs import delete, demo, infer, personalize, status
from jobs.logs import FORMATS, LEVELS, configure_logging

EXIT_USAGE = 2
EPILOG = f"""{personalize.EXIT_CODES}
`omnipersona delete --help` lists delete's own exit codes. Any command: 2 on invalid arguments or
an error it could not handle (one line on stderr; `--debug` prints the traceback).
"""


def version() -> str:
    try:
        return metadata.version("omnipersona")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (before or after the command name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS,
                        help="how much to log (default info; debug also shows Ray's, MLflow's and DeepSpeed's own logs)")
    common.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS,
                        help="text for people (default) or json: one JSON object per line, for log pipelines")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an error (default: one line saying what to do)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    p = argparse.ArgumentParser(prog="omnipersona", parents=[common], epilog=EPILOG,
                                description="Batch personalization of a frozen BAGEL model (OmniPersona).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"omnipersona {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for command in (personalize, demo, status, infer, delete):
        command.add_parser(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    configure_logging("debug" if debug else getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"omnipersona {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - an operator gets one line; --debug shows the traceback
        if debug:
            raise
        print(f"omnipersona {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 500 else text[:497] + "..."


if __name__ == "__main__":
    sys.exit(main())
