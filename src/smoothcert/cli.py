"""``smoothcert <command>``: one subcommand per pipeline stage.

Subcommands live in ``smoothcert.commands.<name>`` and are found automatically:
each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``.
A :class:`SmoothcertError` (bad input) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from smoothcert import commands
from smoothcert.errors import SmoothcertError
from smoothcert.runtime import tune_allocator


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as argparse does, but without the usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one: not on required options, nor where "not given" is None or
    empty, nor twice where the help already says it."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, argparse.SUPPRESS, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))


def _chosen(argv: list[str], names: list[str]) -> list[str]:
    """The command named on the command line (only its module is imported: start-up without the others'
    imports), or all of them when there is none (--help, a typo)."""
    wanted = {n.replace("_", "-"): n for n in names}
    for i, arg in enumerate(argv):
        if arg in wanted and (i == 0 or argv[i - 1] != "--config"):
            return [wanted[arg]]
    return names


CONFIG_ENV = "SMOOTHCERT_CONFIG"  # the config a workflow job reads (set by the Snakefile)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the subcommand it names is loaded (all when it names none)."""
    parser = _Parser(
        prog="smoothcert",
        description="smoothcert: certified robustness by randomized smoothing, one subcommand per pipeline stage",
        formatter_class=_Help,
    )
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV, "params.yaml"),
        help=f"the pipeline configuration, validated before use (default: ${CONFIG_ENV}, which the Snakefile sets to "
        "its frozen copy of the merged config, else params.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    names = _names()
    for mod in names if argv is None else _chosen(argv, names):
        module = importlib.import_module(f"smoothcert.commands.{mod}")
        p = sub.add_parser(
            mod.replace("_", "-"),
            help=module.HELP,
            description=module.HELP,
            formatter_class=_Help,
        )
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    tune_allocator()
    try:
        args.func(args)
    except SmoothcertError as exc:
        print(f"smoothcert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothcert {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
