"""The ``noise-audit`` command line: a thin shell over the library.

The parser is :mod:`noise_audit.cli.parser`, the commands
:mod:`noise_audit.cli.commands`, what reaches the terminal
:mod:`noise_audit.cli.output`.

Exit codes: 0 success; 1 unexpected failure; 2 bad input (a clear message,
nothing written); 3 quality gate failed (``--fail-above RATE``: the estimated
share of label errors is above ``RATE``; the audit and the report are written
before exiting).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from noise_audit.cli.output import (EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_GATE_FAILED, EXIT_OK, GateFailed,  # noqa: F401
                                    StderrProxy, logs_to_stderr, quiet_dependencies, terminal)
from noise_audit.cli.parser import build_parser, check_options
from noise_audit.errors import NoiseAuditError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_dependencies()
    stdout = sys.stdout
    logs_to_stderr()
    try:
        check_options(args)
        with contextlib.redirect_stdout(StderrProxy()):
            if args.command != "plugin":  # reach (or start) the database safely when commands start together
                from noise_audit.store.db import connect

                connect()
            result = args.func(args)
    except NoiseAuditError as e:
        print(f"error: {terminal(e, newlines=True)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except GateFailed as e:
        print(_shown(args, e.output), file=stdout)
        print(terminal(e, newlines=True), file=sys.stderr)
        return EXIT_GATE_FAILED
    if result is not None:
        print(_shown(args, result), file=stdout)
    return EXIT_OK


def _shown(args, result):
    """A command's result as printed: JSON as it is, text through the terminal escape."""
    return result if getattr(args, "json", False) else terminal(result, newlines=True)
