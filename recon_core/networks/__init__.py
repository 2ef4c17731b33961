"""Learned reconstructions: the CU-Net regularizer, IMUNNE (implicit, Jacobian-free
training), Alt-UN (unrolled, end to end) and the plain CU-Net, all on the same problem;
DUNE (representation-space unrolling, :mod:`.dune`) and FLAT (flow-aligned unrolling,
:mod:`.flat`) through the registry below."""
from __future__ import annotations

import importlib

#: Model kinds beyond those of :mod:`.unrolled`, which ``unrolled.build_model`` (and so
#: checkpoints) consults: kind -> "module:Class", imported on first use.
REGISTRY = {
    "dune": "recon_core.networks.dune:DUNE",
    "flat": "recon_core.networks.flat:FLAT",
}


def registered_class(kind: str):
    """The class registered for ``kind``, or None."""
    target = REGISTRY.get(kind)
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
