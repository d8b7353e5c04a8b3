"""What an audit leaves in a FiftyOne dataset: the run (``runs``: typed config,
results, atomic writes, recovery), the fields it owns (``fields``: roles,
locks, column writes) and the database connection (``db``)."""
