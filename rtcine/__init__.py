"""The ``rtcine`` command line: simulate, replay, serve, evaluate, bench, train, view, export."""
__version__ = "0.3.15"
