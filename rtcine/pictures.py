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
