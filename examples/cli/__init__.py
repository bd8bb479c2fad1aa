"""batchkit in a terminal tool: generate from a CSV with a live display, resume, retry.

``python -m examples.cli --help`` (or ``batchkit-demo`` in a development install) lists
the commands; ``make demo`` runs ``generate`` on the bundled ``products.csv``.
"""
