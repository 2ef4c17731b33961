"""Evaluation of the learned reconstructions: a trained network as a method of
:func:`recon_core.evaluation.compare`.

:mod:`recon_core.evaluation` scores images and runs the classical methods without any
learned model; this module, a layer above, wraps a network so that it can be scored the
same way (``rtcine compare``, ``rtcine bench``'s offline reference).
"""
from __future__ import annotations

import torch

from .problem import make_problem


def network_method(model, cg_start_iterations: int = 3, **kwargs):
    """``fn(kspace, coords, maps) -> images`` for a trained network, all frames as one window.

    kspace ``(T, C, S, R)`` complex64, coords ``(T, S, R, 2)``, maps ``(C, Y, X)`` (numpy);
    returns ``(T, Y, X)`` complex64 in the data's units. The network starts from CG-SENSE
    with ``cg_start_iterations`` iterations; ``kwargs`` go to the model's forward (e.g.
    ``max_iter``, ``tol``). ``fn.last_info`` holds the model's info dict of the last call.
    """
    def run(kspace, coords, maps):
        model.eval()
        with torch.no_grad():
            problem = make_problem(torch.from_numpy(kspace), torch.from_numpy(coords), torch.from_numpy(maps),
                                   cg_iterations=cg_start_iterations)
            x, info = model(problem, **kwargs)
        run.last_info = info
        return (x * problem.scale).numpy()
    run.last_info = {}
    return run
