"""Training scans from recorded ISMRMRD files, taken through the chain's own input stages.

A site has its own recorded real-time scans and no ground truth for them. This turns each
slice of such a file into the arrays training reads (the layout of
:func:`recon_core.training.data.prepare`, without the supervised ``target``):

- ``kspace (T, C, S, R)`` complex64 and ``coords (T, S, R, 2)`` cycles/pixel: the complete
  frames of the slice after prewhitening (the file's noise scans), coil compression, the
  stream's own frame markers and gradient-delay correction
  (:func:`gadgets.frames_from_file.load_frames`, the stages of gadgets/chain.py);
- ``maps (C, N, N)``: ESPIRiT from the slice's first ``calibration_frames`` frames, pooled,
  cropped to the object, as the chain estimates them (``cfg.espirit_support``);
- ``reference (T, N, N)``: only when the file carries reference images for the slice
  (``/dataset/reference``, as simulated and shifted-suite files do) *and* the caller asks
  for them; training on a site's scans withholds them (``--supervision ssdu``);
- ``source``: ``"FILE#slice"``, kept in the model's YAML.

A file (or slice) that cannot be used is refused with :class:`UnusableRecording`, whose
message names the file and why: not radial, a header the chain rejects, too few spokes
per frame, or too few complete frames.
"""
from __future__ import annotations

import os

import numpy as np

from recon_core.coils import estimate_maps
from recon_core.config import ReconConfig
from recon_core.mrd import HeaderError, read_images

from .frames_from_file import load_frames
from .images import image_frame

#: fewest spokes per frame a training frame may have (below it ESPIRiT and the SSDU split
#: have too little to work with)
MIN_SPOKES = 5


class UnusableRecording(ValueError):
    """A recorded file, or one slice of it, that cannot become a training scan."""


def recorded_files(paths) -> list[str]:
    """The ``.h5`` files among ``paths`` (files, or folders searched one level deep), sorted."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith((".h5", ".mrd"))]
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return sorted(out)


def prepare_recorded(path: str, min_frames: int, cfg: ReconConfig | None = None, calibration_frames: int = 10,
                     with_reference: bool = False) -> list[dict]:
    """One training scan per usable slice of ``path`` (see the module docstring).

    ``min_frames``: fewest complete frames a slice needs (the training window). Raises
    :class:`UnusableRecording` when no slice of the file is usable; slices that are not
    usable while others are are left out, and named in the returned scans' ``skipped``."""
    cfg = cfg or ReconConfig()
    try:
        protocol, frames = load_frames(path, cfg)
    except HeaderError as e:
        raise UnusableRecording(f"{path}: {e}") from None
    except (OSError, KeyError) as e:
        raise UnusableRecording(f"{path}: not a readable ISMRMRD file ({e})") from None
    references = {}
    if with_reference:
        try:
            for img in read_images(path, "reference"):
                references.setdefault(int(img.slice), []).append(image_frame(img))
        except (KeyError, OSError):
            references = {}
    by_slice: dict[int, list] = {}
    for f in frames:
        by_slice.setdefault(f.slice, []).append(f)
    if not by_slice:
        raise UnusableRecording(f"{path}: no imaging spokes (only noise or non-imaging acquisitions)")
    scans, reasons = [], []
    for s, fs in sorted(by_slice.items()):
        complete = [f for f in fs if not f.partial]
        spokes = complete[0].spokes if complete else 0
        if spokes < MIN_SPOKES:
            reasons.append(f"slice {s}: {spokes} spokes per frame (at least {MIN_SPOKES} are needed)")
            continue
        complete = [f for f in complete if f.spokes == spokes]
        if len(complete) < min_frames:
            reasons.append(f"slice {s}: {len(complete)} complete frames (the training window needs {min_frames})")
            continue
        kspace = np.stack([f.kspace for f in complete]).astype(np.complex64)
        coords = np.stack([f.coords for f in complete]).astype(np.float32)
        t, c, sp, r = kspace.shape
        calib = min(calibration_frames, t)
        maps = estimate_maps(kspace[:calib].transpose(0, 2, 1, 3).reshape(-1, c, r),
                             coords[:calib].reshape(-1, r, 2), (protocol.matrix, protocol.matrix), "espirit",
                             support=cfg.espirit_support)
        scan = {"kspace": kspace, "coords": coords, "maps": maps.astype(np.complex64),
                "source": np.array(f"{os.path.basename(path)}#{s}")}
        ref = references.get(s)
        if ref is not None and len(ref) >= t:
            keep = [f.index for f in complete]
            scan["reference"] = np.stack([ref[i] for i in keep]).astype(np.complex64)
        scans.append(scan)
    if not scans:
        raise UnusableRecording(f"{path}: no usable slice: " + "; ".join(reasons))
    for scan in scans:
        scan["skipped"] = np.array("; ".join(reasons))
    return scans
