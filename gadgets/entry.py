"""Gadgetron entry points.

``<external><execute name="gadgets.entry" target="reconstruct" type="python"/>`` makes
Gadgetron run ``python -m gadgetron <port> gadgets.entry reconstruct``; the
``<configuration>`` element's ``<property name=... value=.../>`` become the
:class:`recon_core.config.ReconConfig`.
"""
from __future__ import annotations

import logging

from recon_core.config import ReconConfig

from . import connection as _connection_fix  # noqa: F401  (closed-socket fix, see gadgets/connection.py)
from .chain import run_chain
from .feeder import ThreadedSource
from .stats import ChainStats

log = logging.getLogger("rtcine.entry")


def config_from_xml(element) -> ReconConfig:
    """``<configuration><property name="k" value="v"/>...</configuration>`` -> ReconConfig.

    ``element`` is the parsed configuration element (``connection.config``) or None."""
    values = {}
    if element is not None:
        props = [element] if element.tag == "property" else element.iter("property")
        for prop in props:
            name = prop.get("name")
            if name is None:
                raise ValueError("a <property> in the chain configuration has no name attribute")
            values[name] = prop.get("value", "")
    return ReconConfig.from_mapping(values)


def handle(connection, cfg: ReconConfig | None = None) -> ChainStats:
    """Run the chain on a gadgetron ``connection``: read items, send images and passed-on items."""
    stats = ChainStats()
    source = None
    try:
        cfg = cfg if cfg is not None else config_from_xml(connection.config)
        # read on a thread of its own: arrival times are stamped when items leave the socket,
        # and the bounded queue holds at most queue_size frames' worth of spokes
        source = ThreadedSource(iter(connection), maxsize=cfg.queue_size * 64)
        for item in run_chain(source, connection.header, cfg, stats):
            connection.send(item)
    except Exception as exc:
        # Gadgetron shows our log; an exception here ends in a plain CLOSE on its side
        log.error("rtcine chain failed after %d images: %s: %s", stats.images, type(exc).__name__, exc)
        stats.errors.append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if source is not None:
            source.close()
        log.info("rtcine chain: %s", _brief(stats))
    return stats


def _brief(stats: ChainStats) -> str:
    s = stats.summary()
    lat = s["latency_ms"]
    return (f"{s['spokes']} spokes, {s['frames']} frames, {s['images']} images, "
            f"{s['partial_frames']} partial, latency p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms")


def reconstruct(connection) -> None:
    """The ``<execute>`` target: configuration from the chain XML."""
    logging.getLogger().setLevel(logging.INFO)
    handle(connection)
