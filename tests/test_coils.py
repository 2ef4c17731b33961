"""Noise prewhitening and coil compression."""
import numpy as np

from recon_core.coils import NoiseCovariance, pca_compression_matrix, prewhitening_matrix


def test_prewhitening_whitens_correlated_noise():
    rng = np.random.default_rng(0)
    mix = np.eye(6) + 0.4 * (rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6)))
    noise = mix @ (rng.normal(size=(6, 20000)) + 1j * rng.normal(size=(6, 20000)))
    cov = NoiseCovariance()
    for chunk in np.split(noise, 10, axis=1):
        cov.add(chunk, dwell_time_us=5.0)
    w = prewhitening_matrix(cov.matrix, acq_dwell_us=5.0, noise_dwell_us=5.0, receiver_bandwidth=0.5)
    white = w @ noise
    c = white @ white.conj().T / white.shape[1]
    np.testing.assert_allclose(c, np.eye(6), atol=0.05)      # scale sqrt(2 * 1 * 0.5) = 1


def test_prewhitening_bandwidth_scale_as_gadgetron():
    cov = np.eye(2, dtype=complex)
    w = prewhitening_matrix(cov, acq_dwell_us=2.0, noise_dwell_us=4.0, receiver_bandwidth=0.793)
    np.testing.assert_allclose(np.diag(w).real, np.sqrt(2 * 2.0 / 4.0 * 0.793), rtol=1e-6)


def test_pca_keeps_the_energy_of_low_rank_data():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 500)) + 0j
    v = pca_compression_matrix(data, 3)
    kept = np.linalg.norm(v @ data) / np.linalg.norm(data)
    assert kept > 0.999
