"""What reaches the terminal: exit codes, tables, and stdout kept for results.

stdout holds a command's result and nothing else; FiftyOne's and our own
progress bars, and our one-line ``warning: ...`` messages, go to stderr.
"""

from __future__ import annotations

import logging
import sys
import warnings

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_GATE_FAILED = 0, 1, 2, 3


class GateFailed(Exception):
    """The ``--fail-above`` gate failed; carries the command's normal output."""

    output: str  # what the command prints on stdout

    def __init__(self, output: str, message: str) -> None:
        super().__init__(message)
        self.output = output


def terminal(text: object, newlines: bool = False) -> str:
    r"""``text`` as the terminal should show it: the one terminal escape of noise-audit.

    Names from the data (class names, dataset and field names, file paths)
    are untrusted: a class named ``"\x1b[2J"`` must not clear the screen, and
    a path holding a bidi override (``"\u202e"``) must not reorder the line.
    Every character that is not printable becomes its Python escape, as
    ``repr`` writes it (``\x1b``, ``\u202e``, ``\n``); with ``newlines`` a
    newline is kept (for our own multi-line text, whose parts were escaped
    already). ``--json`` output is not passed through here: ``json.dumps``
    escapes control characters itself and its values stay unchanged.
    """
    return "".join(ch if ch == " " or ch.isprintable() or (newlines and ch == "\n") else repr(ch)[1:-1]
                   for ch in str(text))


def table(rows, headers):
    """Rows as aligned columns; every cell is shown through :func:`terminal`."""
    headers = [terminal(h) for h in headers]
    rows = [[terminal(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt(x):
    return f"{x:.4f}" if isinstance(x, float) else str(x)


class StderrProxy:
    """Stands in for stdout while a command runs, so what libraries print
    (FiftyOne's progress bars) lands on stderr and stdout holds only results.
    A distinct object, not ``sys.stderr`` itself: ETA's progress bars re-point
    every log handler whose stream *is* ``sys.stdout``."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()

    def isatty(self):
        return sys.stderr.isatty()

    def __getattr__(self, name):
        return getattr(sys.stderr, name)


def logs_to_stderr():
    """FiftyOne logs and progress bars go to stderr, so stdout holds only results."""
    import fiftyone  # noqa: F401 - installs its log handlers

    for handler in logging.getLogger("fiftyone").handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


class _OurMessages(logging.Handler):
    """noise_audit's log records of level WARNING and up, one line each
    (``warning: ...``), on whatever ``sys.stderr`` is when they come."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        sys.stderr.write(f"{record.levelname.lower()}: {terminal(record.getMessage(), newlines=True)}\n")


def _not_mongodb_notice(record):
    return not str(record.msg).startswith("You are running the oldest supported major version of MongoDB")


def _not_nanny_shutdown(record):
    return not str(record.msg).startswith("Worker process still alive after")


def quiet_dependencies():
    """stderr holds our progress bars and messages only.

    Each filter names one source: pyDVL's deprecation notices about its own
    internals (those at import time are filtered where noise_audit imports
    it), FiftyOne's notice that the embedded MongoDB is the oldest supported
    version (it asks nothing of the user), and Dask's note that it killed a
    worker of our ``--dask local:N`` cluster that was slow to stop when the
    command ended. Our own warnings (e.g.
    an unusable feature cache) are one line each, ``warning: ...``.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(pydvl|deprecate)(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydvl(\.|$)")
    logging.getLogger("fiftyone.core.odm.database").addFilter(_not_mongodb_notice)  # once: filters are a set
    logging.getLogger("distributed.nanny").addFilter(_not_nanny_shutdown)
    ours = logging.getLogger("noise_audit")
    if not any(isinstance(h, _OurMessages) for h in ours.handlers):
        ours.addHandler(_OurMessages())
