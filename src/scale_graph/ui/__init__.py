"""`scale ui`: a local, read-only web viewer of runs, forks and evaluations (no asset from the internet).

``catalog`` keeps the run list as an index read in plain SQL, ``views`` builds each page's JSON from the CLI's own read
paths (``runs show --json``, ``runs diff``, ``scale report``'s tables), ``app`` serves them with
the HTML shells of ``pages`` and the vendored scripts under ``static/``, ``command`` is the CLI entry.
"""
