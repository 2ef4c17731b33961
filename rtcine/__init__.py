"""The ``rtcine`` command line: simulate, replay, serve, evaluate."""
__version__ = "0.1.0"
