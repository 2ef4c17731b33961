"""Per-frame preparation (recon_core/frame_prep.py) against the operator it stands for."""
import torch

from recon_core.frame_prep import combine, prepare_frame, reproject
from recon_core.reconstructors import flatten_kspace, make_operator

from conftest import disc_scan


def test_prepared_frame_is_the_operator_without_maps():
    kspace, coords, maps, _ = disc_scan(32, 2, 4, 9)
    coords = coords.reshape(2, 9, 64, 2)
    op = make_operator(coords, maps, toeplitz=True)
    rhs = op.adjoint(op.weigh(flatten_kspace(kspace)))
    x = torch.randn(2, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    for t in range(2):
        prep = prepare_frame(kspace[t].numpy(), coords[t].numpy(), (32, 32))
        torch.testing.assert_close(combine(prep.coil_images, maps), rhs[t], rtol=1e-5, atol=1e-5 * rhs.abs().max())
        torch.testing.assert_close(prep.kernel, op.kernel[t])
        # the one-frame operator of the prepared frame is the batch operator's frame t
        torch.testing.assert_close(prep.operator(maps).normal(x[t:t + 1])[0], op.normal(x)[t],
                                   rtol=1e-5, atol=1e-5 * op.normal(x).abs().max())


def test_reproject_carries_an_image_to_maps_of_another_phase():
    """Maps differing by a phase per pixel (as ESPIRiT's and the fallback maps do): the image
    for the new maps is the old one with the opposite phase; zero where the new maps are."""
    _, _, maps, _ = disc_scan(32, 1, 4, 9)
    maps = maps / (maps.abs() ** 2).sum(0).sqrt().clamp_min(1e-12)          # sum |S|^2 = 1
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    phase = torch.exp(1j * (2.0 * xx + yy ** 2))
    new = maps * phase
    new[:, :4] = 0                                                          # outside the new support
    x = torch.randn(2, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    moved = reproject(x, maps, new)
    torch.testing.assert_close(moved[:, 4:], (x * phase.conj())[:, 4:], rtol=1e-4, atol=1e-4)
    assert moved[:, :4].abs().max() == 0
    # the coil images are unchanged: what the data see is the same
    torch.testing.assert_close((new * moved[:, None])[:, :, 4:], (maps * x[:, None])[:, :, 4:], rtol=1e-4, atol=1e-4)
