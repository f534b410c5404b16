"""The ``scale`` command, one module per verb: ``app`` (the command tree and ``main``), ``solve``,
``runs`` (list/show/resume/delete), ``serve``, ``db``, ``evaluate`` (eval, report), ``traces``,
``whatif`` (runs fork/diff, calibrate), ``servers``, ``ui``; ``common`` holds the shared options and console helpers. Libraries below
never import from here. ``scale = "scale_graph.cli:main"``; ``python -m scale_graph.cli`` too.
"""

from scale_graph.cli.app import app, main, serve_command

__all__ = ["app", "main", "serve_command"]
