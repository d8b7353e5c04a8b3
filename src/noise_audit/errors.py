"""The one exception type users catch."""


class NoiseAuditError(ValueError):
    """Bad input to a noise-audit function.

    Raised before anything is written, so the dataset is left as it was.
    """
