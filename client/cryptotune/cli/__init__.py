"""The ``cryptotune`` command line (Click), a thin layer over the SDK."""
