"""Per-frame preparation (recon_core/frame_prep.py) against the operator it stands for."""
import torch

from recon_core.frame_prep import combine, prepare_frame
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
