"""Offline export: animated GIF (one frame per image), MP4 when an encoder exists, and a
montage PNG with the M-mode (temporal profile) panel."""
from __future__ import annotations

import ismrmrd
import numpy as np
import pytest
from PIL import Image

from recon_core.mrd import write_images
from rtcine import pictures
from rtcine.cli import main

FRAMES, SIZE, TICKS_PER_FRAME = 12, 48, 16          # 16 ticks x 2.5 ms = 40 ms per frame


def beating(frames=FRAMES, size=SIZE) -> np.ndarray:
    """``(T, Y, X)``: a grey disc with a bright 'ventricle' whose radius beats, centred at
    row 20, column 28."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    body = 0.3 * ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2)
    out = []
    for t in range(frames):
        radius = 5 + 3 * np.sin(2 * np.pi * t / frames)
        out.append(body + 0.7 * (((yy - 20) ** 2 + (xx - 28) ** 2) < radius ** 2))
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def cine_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "cine.h5")
    images = []
    for t, frame in enumerate(beating()):
        img = ismrmrd.Image.from_array(frame.astype(np.complex64)[None, None], transpose=False)
        head = img.getHead()
        head.image_index = t + 1
        head.acquisition_time_stamp = 1000 + t * TICKS_PER_FRAME
        img.setHead(head)
        images.append(img)
    assert write_images(path, "images", images) == FRAMES
    return path


def test_export_gif_and_montage_with_mmode(cine_file, tmp_path, capsys):
    gif, png = str(tmp_path / "cine.gif"), str(tmp_path / "montage.png")
    assert main(["export", cine_file, "--gif", gif, "--png", png, "--fps", "10", "--mmode-auto"]) == 0
    out = capsys.readouterr().out
    assert "acquired at 25.0 frames/s" in out                       # from the time stamps

    with Image.open(gif) as anim:                                     # one GIF frame per image
        assert anim.n_frames == FRAMES and anim.size == (2 * SIZE, 2 * SIZE)
        assert anim.info["loop"] == 0 and anim.info["duration"] == 100
        first = np.asarray(anim.convert("L"), dtype=float)
        anim.seek(FRAMES // 4)                                        # largest ventricle
        systole = np.asarray(anim.convert("L"), dtype=float)
    assert first.std() > 20 and np.abs(first - systole).max() > 100  # not blank, and it moves

    # the auto line goes through the beating ventricle (rows 20 +- 8), the montage has the M-mode panel
    assert "M-mode of row" in out and "auto" in out
    row = int(out.split("M-mode of row ")[1].split()[0])
    assert 12 <= row <= 28
    with Image.open(png) as pic:
        rgb = np.asarray(pic.convert("RGB"), dtype=float)
    height = rgb.shape[0]
    mmode_band = rgb[int(0.55 * height):int(0.9 * height)]          # lower part: the M-mode panel
    assert mmode_band.std() > 20
    grey = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert grey[: int(0.4 * height)].std() > 20                      # the frames above it


def test_mmode_profile_and_auto_line():
    frames = beating()
    row, col = pictures.mmode_auto_line(frames)
    assert abs(row - 20) <= 8 and abs(col - 28) <= 8                 # on the moving edge of the ventricle
    profile = pictures.mmode(frames, row=20)
    assert profile.shape == (SIZE, FRAMES) and np.array_equal(profile, frames[:, 20, :].T)
    assert pictures.mmode(frames, col=28).shape == (SIZE, FRAMES)
    # width of the bright segment on row 20 follows the radius: 2r+1 pixels
    widths = (profile > 0.6).sum(axis=0)
    assert widths.max() - widths.min() >= 8
    with pytest.raises(ValueError):
        pictures.mmode(frames, row=SIZE)


def test_export_mmode_row_out_of_range_is_refused(cine_file, tmp_path, capsys):
    assert main(["export", cine_file, "--png", str(tmp_path / "m.png"), "--mmode-row", str(SIZE + 5)]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert main(["export", cine_file]) == 2                          # nothing asked for


def test_mp4_without_encoder_says_how_to_get_one(cine_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pictures, "find_mp4_encoder", lambda: None)
    gif = str(tmp_path / "c.gif")
    assert main(["export", cine_file, "--mp4", str(tmp_path / "c.mp4"), "--gif", gif]) == 1
    err = capsys.readouterr().err
    assert "pip install imageio-ffmpeg" in err and "ffmpeg" in err
    assert not (tmp_path / "c.mp4").exists() and Image.open(gif).n_frames == FRAMES   # the rest is written


def test_mp4_when_an_encoder_exists(cine_file, tmp_path):
    if pictures.find_mp4_encoder() is None:
        pytest.skip("no MP4 encoder here (pip install imageio-ffmpeg, or ffmpeg on PATH)")
    mp4 = str(tmp_path / "c.mp4")
    assert main(["export", cine_file, "--mp4", mp4, "--fps", "25"]) == 0
    with open(mp4, "rb") as f:
        head = f.read(64)
    assert b"ftyp" in head
    try:
        import imageio_ffmpeg
    except ImportError:
        return
    reader = imageio_ffmpeg.read_frames(mp4)
    meta = next(reader)
    assert meta["size"] == (2 * SIZE, 2 * SIZE) and sum(1 for _ in reader) == FRAMES
