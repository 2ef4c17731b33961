"""Gadgetron entry points.

``<external><execute name="gadgets.entry" target="reconstruct" type="python"/>`` makes
Gadgetron run ``python -m gadgetron <port> gadgets.entry reconstruct``; the
``<configuration>`` element's ``<property name=... value=.../>`` become the
:class:`recon_core.config.ReconConfig`.
"""
from __future__ import annotations

import logging
import select

import ismrmrd

from recon_core.allocator import keep_freed_memory
from recon_core.config import ReconConfig
from recon_core.mrd import TICK_SECONDS

from .chain import run_chain
from .connection import harden, stop_reading
from .feeder import ThreadedSource, process_start, stream_clock
from .stats import ChainStats
from .validate import StreamError

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


def handle(connection, cfg: ReconConfig | None = None, stream_start: float | None = None) -> ChainStats:
    """Run the chain on a gadgetron ``connection``: read items, send images and passed-on items.

    A fault in the input (see gadgets/validate.py: a coil count change, a truncated or
    unknown message, a peer gone) ends the stream early: the images of the frames complete
    before it are sent, then :class:`StreamError` is raised. Every error is logged here at
    ERROR with its cause, and marked ``rtcine_logged`` so that callers do not repeat it.
    ``stream_start``: when the stream began (``time.perf_counter()``), if before this call
    (see :func:`gadgets.feeder.stream_clock`).
    """
    stats = ChainStats()
    source = None
    try:
        harden(connection)
        cfg = cfg if cfg is not None else config_from_xml(connection.config)
        # read on a thread of its own: arrival times are stamped when items leave the socket,
        # corrected by the stream's time stamps for a backlog waiting in the socket
        # (feeder.stream_clock), and the bounded queue holds at most queue_size frames' worth of spokes
        source = ThreadedSource(stream_clock(iter(connection), TICK_SECONDS, stream_start, _readable(connection)),
                                maxsize=cfg.queue_size * 64)
        for item in run_chain(source, connection.header, cfg, stats):
            try:
                connection.send(item)
            except OSError as exc:
                what = f"image {stats.images}" if isinstance(item, ismrmrd.Image) else type(item).__name__
                raise ConnectionError(f"could not send {what} to the peer (it closed the connection or stopped "
                                      f"reading): {type(exc).__name__}: {exc}") from exc
        if stats.stream_error:
            raise StreamError(stats.stream_error)
    except Exception as exc:
        # Gadgetron shows our log; an exception here ends in a plain CLOSE on its side
        log.error("rtcine chain failed after %d images: %s: %s (%d frames formed)", stats.images,
                  type(exc).__name__, exc, stats.frames)
        if not isinstance(exc, StreamError):
            stats.errors.append(f"{type(exc).__name__}: {exc}")
        try:
            exc.rtcine_logged = True
        except AttributeError:
            pass
        raise
    finally:
        if source is not None:
            source.close()
        stop_reading(connection)
        log.info("rtcine chain: %s", _brief(stats))
    return stats


def _readable(connection):
    """``waiting()`` for :func:`gadgets.feeder.stream_clock`: whether bytes wait in the socket."""
    sock = getattr(getattr(connection, "socket", None), "socket", None)
    if sock is None:
        return None

    def waiting() -> bool:
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False
    return waiting


def _brief(stats: ChainStats) -> str:
    s = stats.summary()
    lat = s["latency_ms"]
    text = (f"{s['spokes']} spokes, {s['frames']} frames, {s['images']} images, "
            f"{s['partial_frames']} partial, latency p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms")
    problems = [f"{s[k]} {k.replace('_', ' ')}" for k in ("bad_spokes", "duplicate_spokes", "out_of_order_spokes",
                                                          "gaps", "skipped_frames") if s[k]]
    if problems:
        text += "; " + ", ".join(problems)
    if s.get("slices", 0) > 1:
        text += f"; {s['slices']} slices"
    if s.get("non_imaging"):
        text += "; non-imaging acquisitions passed on: " + ", ".join(f"{k} x{v}" for k, v in s["non_imaging"].items())
    if s["fallback"]:
        text += f"; fallback: {s['fallback']}"
    if s["stream_error"]:
        text += f"; ended early: {s['stream_error']}"
    return text


def reconstruct(connection) -> None:
    """The ``<execute>`` target: configuration from the chain XML. Gadgetron starts this process
    when the stream begins, so the spokes have been arriving since the process started: the
    chain counts their latency from then (:func:`gadgets.feeder.stream_clock`)."""
    logging.getLogger().setLevel(logging.INFO)
    keep_freed_memory()
    handle(connection, stream_start=process_start())
