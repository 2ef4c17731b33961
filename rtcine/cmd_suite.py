"""``rtcine suite build``: write the shifted generalization suite (recon_core/shifted_suite).

    rtcine suite build --out runs/shifted [--frames 32] [--val-per-axis 1] [--test-per-axis 2] [--indist 2]

Then ``rtcine compare --suite shifted --suite-dir runs/shifted --methods all``.
"""
from __future__ import annotations


def add_parser(sub):
    from recon_core.shifted_suite.build import add_build_arguments, run_build

    p = sub.add_parser("suite", help="build the shifted generalization test suite of ISMRMRD scans")
    actions = p.add_subparsers(dest="suite_command", required=True)
    b = actions.add_parser("build", help="write the suite's val/test/indist files and manifest.json")
    add_build_arguments(b)
    b.set_defaults(func=run_build)
