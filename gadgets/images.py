"""Image finishing: a reconstructed frame becomes an ISMRMRD image with the header fields
and meta attributes Gadgetron's image gadgets set."""
from __future__ import annotations

import ismrmrd
import numpy as np

SERIES_DESCRIPTION = "rtcine_realtime_cine"


def make_image(frame, image: np.ndarray, protocol, info: dict, series_index: int = 0) -> ismrmrd.Image:
    """``image (Y, X)`` complex -> ``ismrmrd.Image`` (complex64, one channel).

    The header is copied from the frame's last acquisition (position, directions, patient
    table, time stamps, slice/contrast/phase/repetition/set), as Gadgetron does; then
    ``image_index = frame + 1`` (frames counted per slice), ``repetition = frame``,
    ``image_series_index = set * slices + slice + series_index`` (``slices`` from the
    header's encodingLimits, ``protocol.slices``), the reconstructed field of view and image type.
    ``info`` becomes meta attributes (prefixed ``rtcine_``) beside Gadgetron's own.
    """
    data = np.ascontiguousarray(image, dtype=np.complex64)[None, None]   # (channels, z, y, x)
    img = ismrmrd.Image.from_array(data, acquisition=frame.last, transpose=False)
    head = img.getHead()
    acq = frame.last
    head.image_index = frame.index + 1
    head.repetition = frame.index % 65536
    head.image_series_index = acq.idx.set * getattr(protocol, "slices", 1) + acq.idx.slice + series_index
    head.image_type = ismrmrd.IMTYPE_COMPLEX
    head.field_of_view[:] = (protocol.fov_mm, protocol.fov_mm, 8.0)
    img.setHead(head)
    mag = np.abs(image)
    hi = float(np.percentile(mag, 99.5)) if mag.size else 0.0
    meta = ismrmrd.Meta()
    meta["GADGETRON_DataRole"] = "Image"
    meta["GADGETRON_ImageNumber"] = str(frame.index + 1)
    meta["GADGETRON_SeqDescription"] = SERIES_DESCRIPTION
    meta["GADGETRON_ImageComment"] = f"rtcine {info.get('recon', '')}"
    meta["WindowCenter"] = f"{hi / 2:.6g}"
    meta["WindowWidth"] = f"{hi:.6g}"
    meta["rtcine_frame"] = str(frame.index)
    meta["rtcine_slice"] = str(frame.slice)
    meta["rtcine_spokes"] = str(frame.spokes)
    meta["rtcine_partial"] = str(int(frame.partial))
    delay = getattr(frame, "gradient_delay", None)
    if delay is not None:               # readout samples x,y,xy (gadgets/gradient_delay.py)
        meta["rtcine_gradient_delay"] = f"{delay.x:.3f},{delay.y:.3f},{delay.xy:.3f}"
    for key, value in info.items():
        meta[f"rtcine_{key}"] = f"{value:.4f}" if isinstance(value, float) else str(value)
    img.meta = meta
    return img


def image_frame(img: ismrmrd.Image) -> np.ndarray:
    """The ``(Y, X)`` complex64 pixels of a single-channel 2D image."""
    return np.asarray(img.data)[0, 0]
