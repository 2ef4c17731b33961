"""The fixed-point solver's convergence test: read on the host every ``check_every`` iterations."""
import torch

from recon_core.solvers import fixed_point


def _contraction(x):
    """A linear contraction with fixed point 1 (rate 0.5 per iteration)."""
    return 0.5 * x + 0.5


def test_fixed_point_checks_every_k_iterations_and_matches_plain_iteration():
    x0 = torch.zeros(2, 8, 8, dtype=torch.complex64)
    every1 = fixed_point(_contraction, x0, max_iter=50, tol=1e-3)
    every4 = fixed_point(_contraction, x0, max_iter=50, tol=1e-3, check_every=4)
    assert every1.converged and every4.converged
    assert every4.iterations % 4 == 0 and every1.iterations <= every4.iterations < every1.iterations + 4
    assert every4.changes[:every1.iterations] == every1.changes      # same changes, read later
    assert len(every4.changes) == every4.iterations
    expected = 1 - 0.5 ** every4.iterations                           # the iterate after that many steps
    assert torch.allclose(every4.x, torch.full_like(x0, expected))


def test_fixed_point_reads_the_deadline_only_at_the_checks():
    calls = []

    def deadline():
        calls.append(1)
        return len(calls) >= 2                            # expires at the second check

    x0 = torch.zeros(4, dtype=torch.complex64)
    result = fixed_point(_contraction, x0, max_iter=50, tol=0.0, deadline=deadline, check_every=3)
    assert len(calls) == 2 and result.iterations == 6 and not result.converged
    assert len(result.changes) == 6
