"""Trajectories derived from the header and profile counters agree with acq.traj."""
import math

import numpy as np
import pytest

from recon_core.mrd import acquisition_coordinates, open_dataset, protocol_from_header, read_header
from recon_core.trajectory import GOLDEN_ANGLE, TINY_GOLDEN_ANGLE, spoke_angles


def test_angle_increments():
    assert math.degrees(GOLDEN_ANGLE) == pytest.approx(111.246, abs=1e-3)
    assert math.degrees(TINY_GOLDEN_ANGLE) == pytest.approx(23.628, abs=1e-3)
    lin = spoke_angles(np.arange(26), "linear", 13)
    assert np.allclose(np.diff(lin[:13]), math.pi / 13)
    assert lin[13] == pytest.approx(math.pi / 13 / 4)


def test_header_trajectory_equals_acq_traj(small_file, small_file_notraj):
    with_traj, without = open_dataset(small_file), open_dataset(small_file_notraj)
    try:
        protocol = protocol_from_header(read_header(without))
        assert protocol.ordering == "golden" and protocol.spokes_per_frame == 13
        checked = 0
        for i in range(with_traj.number_of_acquisitions()):
            a, b = with_traj.read_acquisition(i), without.read_acquisition(i)
            if a.trajectory_dimensions == 0:
                continue            # noise scans
            assert b.trajectory_dimensions == 0
            from_header = acquisition_coordinates(b, protocol, protocol.ordering)
            np.testing.assert_allclose(from_header, a.traj, atol=1e-6)
            checked += 1
        assert checked == 16 * 13
    finally:
        with_traj.close()
        without.close()


def test_profile_counter_unwraps_after_65536_spokes():
    """The 16-bit counter wraps; the stream's spoke 65536 keeps its own golden angle."""
    import ismrmrd

    from gadgets.frames import ProfileCounter
    from recon_core.mrd import RadialProtocol
    from recon_core.trajectory import radial_coordinates, spoke_angles

    counter = ProfileCounter()
    assert [counter(c) for c in (65534, 65535, 0, 1, 1, 0)] == [65534, 65535, 65536, 65537, 65537, 65536]
    protocol = RadialProtocol(matrix=32, samples=64, coils=1, spokes_per_frame=13, ordering="golden",
                              tr_ms=3.0, fov_mm=300.0)
    acq = ismrmrd.Acquisition.from_array(np.zeros((1, 64), np.complex64))
    acq.idx.kspace_encode_step_1 = 0                       # 65536 as the wrapped counter says it
    expected = radial_coordinates(spoke_angles(np.array([65536]), "golden", 13), 64)[0]
    np.testing.assert_allclose(acquisition_coordinates(acq, protocol, "golden", profile=65536), expected)
    assert not np.allclose(acquisition_coordinates(acq, protocol, "golden"), expected)
