"""The `acedata` command line. Each command lives in `acedata/commands/<name>.py`
and defines `add(subparsers)`; this module discovers them, so adding a command
touches no shared file."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from pydantic import ValidationError

from acedata.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    import acedata.commands as pkg

    parser = argparse.ArgumentParser(
        prog="acedata",
        description="Collect instruction-editing training data with Ray (ACE pipeline) and train on it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"acedata.commands.{mod.name}").add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "insecure_trusted_network", False):
        from acedata import job_connect

        job_connect.TRUST_PLAIN_HTTP = True
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"acedata {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # a config built from command-line options: name the option
        print(f"acedata {args.command}: error: {_option_errors(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; committed work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


def _option_errors(err: ValidationError, args: argparse.Namespace) -> str:
    parts = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        where = f"--{field.replace('_', '-')}" if hasattr(args, field) else ".".join(map(str, e["loc"]))
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
