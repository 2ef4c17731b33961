"""Pictures a person would rather look at: cine montages."""
from __future__ import annotations

import numpy as np


def cine_montage(path: str, png: str, group: str = "images", columns: int = 8, max_frames: int = 16) -> None:
    """PNG montage of up to ``max_frames`` magnitude frames of an image group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gadgets.images import image_frame
    from recon_core.mrd import read_images

    frames = np.stack([np.abs(image_frame(i)) for i in read_images(path, group)[:max_frames]])
    rows = int(np.ceil(len(frames) / columns))
    vmax = np.percentile(frames, 99.5)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (ax, f) in enumerate(zip(axes.ravel(), frames)):
        ax.imshow(f, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"frame {k}", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- exporting a cine: GIF, MP4, montage with an M-mode panel --------------------------------------------

class EncoderMissing(RuntimeError):
    """No MP4 encoder (imageio-ffmpeg or ffmpeg on PATH) is available."""


MP4_HELP = ("MP4 needs an ffmpeg encoder, and none was found: `pip install imageio-ffmpeg` (a wheel with ffmpeg "
            "inside, nothing else to install) or put ffmpeg on PATH (Debian/Ubuntu: `apt-get install ffmpeg`; "
            "conda: `conda install -c conda-forge ffmpeg`)")


def load_cine(path: str, group: str = "images"):
    """Magnitude frames ``(T, Y, X)`` float32 of an image group, and the frame interval in
    seconds from the images' acquisition time stamps (None when they do not increase)."""
    from gadgets.images import image_frame
    from recon_core.mrd import TICK_SECONDS, read_images

    images = read_images(path, group)
    if not images:
        raise ValueError(f"{path}: image group '{group}' is empty")
    frames = np.stack([np.abs(image_frame(i)) for i in images]).astype(np.float32)
    stamps = np.array([i.getHead().acquisition_time_stamp for i in images], dtype=np.float64)
    steps = np.diff(stamps)
    dt = float(np.median(steps)) * TICK_SECONDS if len(steps) and np.all(steps > 0) else None
    return frames, dt


def cine_window(frames: np.ndarray, center: float | None = None, width: float | None = None):
    """One window for the whole cine (no flicker): ``0 .. 99.5th percentile`` unless given."""
    hi = float(np.percentile(frames, 99.5)) if frames.size else 1.0
    hi = hi if hi > 0 else 1.0
    width = float(width) if width is not None else hi
    center = float(center) if center is not None else width / 2
    return center, width


def cine_uint8(frames: np.ndarray, center: float, width: float, scale: int = 1) -> np.ndarray:
    """``(T, Y, X)`` -> windowed uint8 frames, enlarged ``scale`` times (bicubic)."""
    from gadgets.viewer import window_uint8

    u8 = window_uint8(frames, center, width)
    if scale > 1:
        from PIL import Image as PILImage

        t, y, x = u8.shape
        u8 = np.stack([np.asarray(PILImage.fromarray(f).resize((x * scale, y * scale), PILImage.BICUBIC))
                       for f in u8])
    return u8


def write_gif(frames_u8: np.ndarray, path: str, fps: float = 20.0) -> int:
    """Animated, looping greyscale GIF, one GIF frame per cine frame; returns the frame count.

    GIF delays are whole 1/100 s (20 fps -> 50 ms); Pillow writes a frame identical to
    the one before (never the case for reconstructed, noisy frames) as a longer delay."""
    from PIL import Image as PILImage

    pictures = [PILImage.fromarray(f, mode="L") for f in frames_u8]
    pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:], loop=0,
                     duration=max(20, int(round(1000.0 / fps))), optimize=False, disposal=1)
    return len(pictures)


def find_mp4_encoder() -> str | None:
    """Path of an ffmpeg executable: imageio-ffmpeg's bundled one, else ``ffmpeg`` on PATH."""
    import shutil

    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe:
            return exe
    except Exception:  # not installed, or its binary missing
        pass
    return shutil.which("ffmpeg")


def write_mp4(frames_u8: np.ndarray, path: str, fps: float = 20.0, encoder: str | None = None) -> int:
    """H.264 MP4 (yuv420p, plays everywhere) by piping raw frames to ffmpeg."""
    import subprocess

    exe = encoder or find_mp4_encoder()
    if not exe:
        raise EncoderMissing(MP4_HELP)
    t, y, x = frames_u8.shape
    cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{x}x{y}",
           "-r", f"{fps:g}", "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-crf", "17", "-movflags", "+faststart", path]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames_u8).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg ({exe}) failed: {proc.stderr.decode(errors='replace').strip()[-800:]}")
    return t


def mmode_auto_line(frames: np.ndarray, smooth: int = 5) -> tuple[int, int]:
    """``(row, col)`` of the pixel of largest temporal variance (after a ``smooth`` x
    ``smooth`` box filter, so a moving edge wins over single noisy pixels)."""
    from scipy.ndimage import uniform_filter

    var = frames.var(axis=0)
    if smooth > 1:
        var = uniform_filter(var, size=smooth, mode="nearest")
    row, col = np.unravel_index(int(np.argmax(var)), var.shape)
    return int(row), int(col)


def mmode(frames: np.ndarray, row: int | None = None, col: int | None = None) -> np.ndarray:
    """Temporal profile: image row ``row`` (or column ``col``) of every frame, stacked
    over time -> ``(X or Y, T)`` (space down, time across)."""
    if (row is None) == (col is None):
        raise ValueError("give exactly one of row, col")
    t, y, x = frames.shape
    if row is not None:
        if not 0 <= row < y:
            raise ValueError(f"M-mode row {row} outside the image (0..{y - 1})")
        return frames[:, row, :].T
    if not 0 <= col < x:
        raise ValueError(f"M-mode column {col} outside the image (0..{x - 1})")
    return frames[:, :, col].T


def mmode_montage(frames: np.ndarray, png: str, row: int | None = None, col: int | None = None,
                  center: float | None = None, width: float | None = None, dt: float | None = None,
                  panels: int = 6, title: str = "", marker: tuple[int, int] | None = None) -> None:
    """A real-time cine figure: ``panels`` frames spread over the cine with the M-mode line
    drawn on them, and the M-mode panel (that line over time) beneath."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, y, x = frames.shape
    center, width = cine_window(frames, center, width)
    vmin, vmax = center - width / 2, center + width / 2
    profile = mmode(frames, row=row, col=col)
    picks = np.unique(np.linspace(0, t - 1, min(panels, t)).round().astype(int))
    n = len(picks)
    time_label, extent_t = ("time (s)", t * dt) if dt else ("frame", t)
    fig_w = max(1.9 * n, 7.0)
    top = fig_w / n * y / x
    fig = plt.figure(figsize=(fig_w, top + 2.6 + 0.9), facecolor="black")
    grid = fig.add_gridspec(2, n, height_ratios=[top, 2.6], hspace=0.25, wspace=0.04)
    line_kw = dict(color="#ffd54a", lw=1.0, ls="--")
    for k, f in enumerate(picks):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(frames[f], cmap="gray", vmin=vmin, vmax=vmax, interpolation="bilinear")
        if row is not None:
            ax.axhline(row, **line_kw)
        else:
            ax.axvline(col, **line_kw)
        if marker is not None:
            ax.plot(marker[1], marker[0], "o", ms=4, mfc="none", mec="#ff8a65", mew=1.0)
        when = f"{f * dt:.2f} s" if dt else ""
        ax.set_title(f"frame {f}" + (f"  {when}" if when else ""), color="white", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    space = x if row is not None else y
    ax.imshow(profile, cmap="gray", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest",
              extent=(0, extent_t, space - 0.5, -0.5))
    ax.set_xlabel(time_label, color="white", fontsize=9)
    ax.set_ylabel("x (pixel)" if row is not None else "y (pixel)", color="white", fontsize=9)
    ax.set_title(f"M-mode: {'row' if row is not None else 'column'} {row if row is not None else col} over "
                 f"{t} frames", color="white", fontsize=9)
    ax.tick_params(colors="white", labelsize=8)
    for side in ax.spines.values():
        side.set_color("#666")
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.savefig(png, dpi=110, facecolor="black", bbox_inches="tight")
    plt.close(fig)
