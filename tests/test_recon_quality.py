"""Classical reconstructions on a simulated scan: CG-SENSE beats gridding, both beat a floor."""
import numpy as np
import torch

from recon_core.coils import estimate_maps, prewhitening_matrix
from recon_core.evaluation import body_mask, data_consistency
from recon_core.metrics import frame_metrics
from recon_core.reconstructors import cg_sense, gridding


def _prepared(scan):
    w = prewhitening_matrix(scan.noise_covariance, 1.0, 1.0, 0.5)
    kspace = np.einsum("ij,tjsr->tisr", w, scan.kspace).astype(np.complex64)
    t, c, s, r = kspace.shape
    maps = estimate_maps(kspace.transpose(0, 2, 1, 3).reshape(-1, c, r), scan.coords.reshape(-1, r, 2),
                         scan.reference.shape[-2:], "espirit")
    return kspace, maps


def test_cgsense_beats_gridding_and_both_beat_floor(small_scan):
    kspace, maps = _prepared(small_scan)
    k, c, m = torch.from_numpy(kspace), torch.from_numpy(small_scan.coords), torch.from_numpy(maps)
    mask = body_mask(small_scan.reference)
    grid = frame_metrics(gridding(k, c, m).numpy(), small_scan.reference, mask)["mean"]
    cg = frame_metrics(cg_sense(k, c, m, iterations=8).numpy(), small_scan.reference, mask)["mean"]
    # a broken operator (wrong sign, wrong density, swapped axes) lands far below these
    assert grid["psnr"] > 17 and grid["ssim"] > 0.4
    assert cg["psnr"] > grid["psnr"] + 1.0
    assert cg["ssim"] > grid["ssim"]


def test_cgsense_fits_the_data_better_than_gridding(small_scan):
    kspace, maps = _prepared(small_scan)
    k, c, m = torch.from_numpy(kspace), torch.from_numpy(small_scan.coords), torch.from_numpy(maps)
    grid = data_consistency(gridding(k, c, m).numpy(), kspace, small_scan.coords, maps)
    cg = data_consistency(cg_sense(k, c, m, iterations=8).numpy(), kspace, small_scan.coords, maps)
    assert cg.mean() < grid.mean()
    assert cg.mean() < 0.5


def test_texture_object_scan_is_consistent_moves_and_is_zero_outside_its_outline():
    """The training's second object family (recon_core.texture_phantom): its k-space is that
    of its reference (CG-SENSE with 64 spokes per frame recovers it, as it does the cardiac one), the object moves from
    frame to frame within its beat, and the corners of the FOV are empty."""
    from recon_core.simulate import SimulationConfig, simulate

    scan = simulate(SimulationConfig(frames=6, coils=8, matrix=64, spokes_per_frame=64, snr=200, seed=4,
                                     object="texture", tr_ms=10.0, motion_samples=1))
    ref = scan.reference
    assert np.abs(ref[:, :4, :4]).max() < 1e-3 * np.abs(ref).max()
    moved = np.abs(np.abs(ref[1:]) - np.abs(ref[:1])).max(axis=(1, 2)) / np.abs(ref).max()
    assert moved.max() > 0.05                          # a beat of 50-120/min within 6 x 0.64 s frames
    kspace, maps = _prepared(scan)
    k, c, m = torch.from_numpy(kspace), torch.from_numpy(scan.coords), torch.from_numpy(maps)
    cg = frame_metrics(cg_sense(k, c, m, iterations=15).numpy(), ref, body_mask(ref))["mean"]
    # 22.5 / 0.93 (the cardiac phantom: 25.9 / 0.94; both limited by the fine object's edges
    # beyond the 64x64 matrix); a wrong sign, density or axis lands far below
    assert cg["psnr"] > 20 and cg["ssim"] > 0.88, cg
