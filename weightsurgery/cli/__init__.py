"""The ``weightsurgery`` command line: one module per command, run through :func:`weightsurgery.cli.main.main`."""
