"""Model files without pickle: weights in safetensors, configuration in YAML beside them.

    model.safetensors   the state dict (tensors only; extra tensors under ``__extra__.``)
    model.yaml          {kind, arch: {...}, training: {...}, ...further keys}

``kind`` and ``arch`` rebuild the network (:func:`~recon_core.networks.unrolled.build_model`);
``training`` records how it was trained (steps, validation numbers, commands, a note);
a ``streaming:`` block, when present, is the schedule a real-time model was trained for.
Inference loads models here; training writes them with :func:`save_checkpoint`.
"""
from __future__ import annotations

import os

import torch
import yaml
from safetensors.torch import load_file, save_file

from .unrolled import build_model


def _base(path: str) -> str:
    return path[:-len(".safetensors")] if path.endswith(".safetensors") else path


def model_files(path: str) -> tuple[str, str]:
    """``(weights, yaml)``: the two files of the model ``path`` (``.safetensors`` or its base name)."""
    base = _base(path)
    return base + ".safetensors", base + ".yaml"


def save_checkpoint(path: str, model: torch.nn.Module, kind: str, arch: dict, training: dict | None = None,
                    extra_tensors: dict | None = None, meta: dict | None = None) -> None:
    """Write ``path`` (``.safetensors``) and its ``.yaml`` twin atomically; ``meta``: further
    top-level YAML keys (e.g. ``streaming:``, the schedule a real-time model was trained for)."""
    base = _base(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[f"__extra__.{k}"] = v.detach().cpu().contiguous()
    save_file(tensors, base + ".safetensors.tmp")
    with open(base + ".yaml.tmp", "w") as f:
        yaml.safe_dump({"kind": kind, "arch": arch, "training": training or {}, **(meta or {})}, f, sort_keys=False)
    os.replace(base + ".safetensors.tmp", base + ".safetensors")
    os.replace(base + ".yaml.tmp", base + ".yaml")


def read_meta(path: str) -> dict:
    """The YAML of the model ``path`` (``.safetensors`` or its base name); ``FileNotFoundError``
    naming the file when it is missing."""
    base = _base(path)
    if not os.path.exists(base + ".yaml"):
        raise FileNotFoundError(f"model file {base}.yaml does not exist")
    with open(base + ".yaml") as f:
        return yaml.safe_load(f)


def load_checkpoint(path: str, device: str = "cpu"):
    """Return ``(model, meta, extra_tensors)``: the network in eval mode on ``device``, its
    YAML as a dict, and the tensors saved beside the state dict. Raises
    ``FileNotFoundError`` naming the missing file, or ``ValueError`` naming the file that
    cannot be read or does not match its configuration."""
    base = _base(path)
    for p in model_files(path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"model file {p} does not exist")
    try:
        with open(base + ".yaml") as f:
            meta = yaml.safe_load(f)
        model = build_model(meta["kind"], **meta.get("arch", {}))
        tensors = load_file(base + ".safetensors", device=str(device))
    except Exception as exc:
        raise ValueError(f"model {base}.safetensors/.yaml cannot be loaded: {type(exc).__name__}: {exc}") from exc
    extra = {k[len("__extra__."):]: v for k, v in tensors.items() if k.startswith("__extra__.")}
    state = {k: v for k, v in tensors.items() if not k.startswith("__extra__.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"model {base}.safetensors does not match its configuration: {exc}") from exc
    return model.to(device).eval(), meta, extra
