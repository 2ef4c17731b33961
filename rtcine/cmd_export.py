"""``rtcine export``: a reconstructed cine as GIF, MP4 and a figure with an M-mode panel.

    rtcine export OUT.h5 [--group images] [--gif cine.gif] [--mp4 cine.mp4] [--png montage.png]
                  [--fps 20] [--mmode-row N | --mmode-col N | --mmode-auto] [--scale 2]
                  [--window W --level L]

One window/level for the whole cine (0 .. 99.5th percentile of the magnitude unless
``--window``/``--level`` say otherwise), so frames do not flicker. MP4 needs an ffmpeg
encoder (``pip install imageio-ffmpeg``, or ffmpeg on PATH); without one, the other
outputs are still written and the command says how to get one.
"""
from __future__ import annotations

import sys


def cmd_export(args) -> int:
    from rtcine.pictures import (EncoderMissing, cine_uint8, cine_window, load_cine, mmode_auto_line,
                                 mmode_montage, write_gif, write_mp4)

    if not (args.gif or args.mp4 or args.png):
        print("rtcine export: nothing to write: give --gif, --mp4 and/or --png", file=sys.stderr)
        return 2
    if args.fps <= 0:
        print("rtcine export: --fps must be positive", file=sys.stderr)
        return 2
    frames, dt = load_cine(args.input, args.group)
    t, y, x = frames.shape
    center, width = cine_window(frames, args.level, args.window)
    rate = f", acquired at {1 / dt:.1f} frames/s" if dt else ""
    print(f"{args.input}: {t} frames of {y}x{x}{rate}; window {width:.4g} level {center:.4g}")
    status = 0
    if args.gif or args.mp4:
        u8 = cine_uint8(frames, center, width, scale=max(1, args.scale))
        if args.gif:
            n = write_gif(u8, args.gif, args.fps)
            print(f"GIF: {args.gif} ({n} frames at {args.fps:g} frames/s, {u8.shape[2]}x{u8.shape[1]})")
        if args.mp4:
            try:
                n = write_mp4(u8, args.mp4, args.fps)
                print(f"MP4: {args.mp4} ({n} frames at {args.fps:g} frames/s, H.264)")
            except EncoderMissing as exc:
                print(f"rtcine export: no MP4 written: {exc}", file=sys.stderr)
                status = 1
            except RuntimeError as exc:
                print(f"rtcine export: no MP4 written: {exc}", file=sys.stderr)
                status = 1
    if args.png:
        row, col, marker, how = args.mmode_row, args.mmode_col, None, ""
        if row is None and col is None:          # --mmode-auto, also the default
            marker = mmode_auto_line(frames)
            row, how = marker[0], f" (auto: through the pixel of largest temporal variance, column {marker[1]})"
        try:
            mmode_montage(frames, args.png, row=row, col=col, center=center, width=width, dt=dt,
                          panels=args.panels, marker=marker,
                          title=f"{args.input}  [{args.group}]" if args.title is None else args.title)
        except ValueError as exc:
            print(f"rtcine export: {exc}", file=sys.stderr)
            return 2
        line = f"row {row}" if row is not None else f"column {col}"
        print(f"PNG: {args.png} ({min(args.panels, t)} frames + M-mode of {line}{how})")
    return status


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a reconstructed cine as animated GIF, MP4 and a montage PNG with an M-mode panel",
        description="Export the images of an ISMRMRD file (e.g. `rtcine replay --out`) as an animated GIF, an "
                    "MP4 (needs ffmpeg: pip install imageio-ffmpeg) and a figure of a few frames with the "
                    "temporal profile (M-mode) of one image line through the heart.")
    p.add_argument("input", help="ISMRMRD file with reconstructed images")
    p.add_argument("--group", default="images", help="image group (default: images)")
    p.add_argument("--gif", help="animated GIF to write")
    p.add_argument("--mp4", help="MP4 (H.264) to write; needs imageio-ffmpeg or ffmpeg on PATH")
    p.add_argument("--png", help="montage PNG: frames + M-mode panel")
    p.add_argument("--fps", type=float, default=20.0, help="playback frame rate of GIF/MP4 (default 20)")
    p.add_argument("--scale", type=int, default=2, help="enlarge GIF/MP4 frames N times (default 2)")
    p.add_argument("--window", type=float, help="window width (image units; default: 99.5th percentile)")
    p.add_argument("--level", type=float, help="window centre (default: window / 2)")
    p.add_argument("--panels", type=int, default=6, help="frames shown above the M-mode panel (default 6)")
    p.add_argument("--title", help="title of the montage (default: file and group)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--mmode-row", type=int, metavar="N", help="M-mode along image row N")
    m.add_argument("--mmode-col", type=int, metavar="N", help="M-mode along image column N")
    m.add_argument("--mmode-auto", action="store_true",
                   help="M-mode along the row through the pixel of largest temporal variance (default)")
    p.set_defaults(func=cmd_export)
