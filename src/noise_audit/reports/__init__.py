"""The unattended noise-audit report: ``summary`` gathers the numbers and
writes the files, ``html`` and ``markdown`` render them, ``plots`` draws the
figures."""
