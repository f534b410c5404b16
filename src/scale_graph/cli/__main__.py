"""``python -m scale_graph.cli``: the ``scale`` command."""

from scale_graph.cli.app import main

if __name__ == "__main__":
    main()
