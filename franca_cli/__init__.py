"""The ``franca`` command line."""
