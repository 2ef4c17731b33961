"""``rtcine health``: exit 0 when the services are up and warm, 1 (with the reasons) when not.

    rtcine health --port 18000 --ready-file /tmp/rtcine-ready      # rtcine serve, warm
    rtcine health --port 9002 --port 18000 --ready-file F          # Gadgetron and rtcine serve

Makes no connection (see :mod:`gadgets.health`): usable from Docker's ``HEALTHCHECK`` and
systemd without a refused stream in either server's log. ``python -m gadgets.health`` is the
same check with fewer imports, for checks every few seconds.
"""
from __future__ import annotations


def add_parser(sub):
    from gadgets.health import add_arguments

    p = sub.add_parser("health", help="check that servers listen (and rtcine serve is warm) without connecting")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from gadgets.health import report

    return report(args.port, args.ready_file, args.quiet)
