"""Checkpoints without pickle: weights in safetensors, configuration in YAML beside them.

The file format and its reader live with inference, in :mod:`recon_core.networks.checkpoint`
(inference never imports training code); training writes checkpoints through this name.
"""
from ..networks.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
