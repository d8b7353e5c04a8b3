"""The one exception type users catch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class NoiseAuditError(ValueError):
    """Bad input to a noise-audit function.

    Raised before anything is written, so the dataset is left as it was.
    """


MISSING: str = "missing"  # the reason given for a file that does not exist


class UnreadableImages(NoiseAuditError):
    """Image files that cannot be used, every one of them.

    ``files`` is ``[(path, reason)]``, reason ``"missing"`` or the decoder's
    error. The message lists the first :attr:`SHOWN` of them.
    """

    SHOWN: int = 100
    files: list[tuple[str, str]]

    def __init__(self, files: Iterable[tuple[Any, Any]]) -> None:
        self.files = [(str(path), str(reason)) for path, reason in files]
        n, n_missing = len(self.files), sum(reason == MISSING for _, reason in self.files)
        kinds = [f"{n_missing} missing"] if n_missing else []
        if n > n_missing:
            kinds.append(f"{n - n_missing} not decodable")
        shown = [f"{_one_line(path)} ({reason})" for path, reason in self.files[: self.SHOWN]]
        if n > self.SHOWN:
            shown.append(f"... and {n - self.SHOWN} more")
        super().__init__(
            f"{n} image file{'s' if n != 1 else ''} cannot be read ({', '.join(kinds)}); "
            f"fix or remove {'them' if n != 1 else 'it'}:\n  " + "\n  ".join(shown)
        )

    def __reduce__(self) -> tuple[type, tuple[list[tuple[str, str]]]]:  # pickled whole, e.g. from a Dask worker
        return type(self), (self.files,)


def _one_line(path: str) -> str:
    """A path as one line of a message: as it is, or as Python writes it (``'a\\nb.jpg'``) when it holds
    a newline or another character that is not printable."""
    return path if path.isprintable() else repr(path)
