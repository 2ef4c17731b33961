"""Reconstruction configuration: one validated dataclass, from YAML or from strings.

The same keys are read from a YAML file (``rtcine replay --config``) and from the
``<property name=... value=.../>`` elements of a Gadgetron chain's ``<configuration>``.
Unknown keys and values of the wrong type are rejected with a message that names them.

Named presets (``recon_core/presets/NAME.yaml``) are sets of keys for the useful
combinations; the layers, each over the one before: the field defaults of
:class:`ReconConfig`, then a preset, then the keys given. Which preset: the ``preset`` key
(a chain property, a YAML key, ``--preset``); else, when ``recon`` is given, the preset of
that name if there is one (``cgsense``, ``gridding``; none for ``imunne``: its field
defaults); else :data:`DEFAULT_PRESET`, ``realtime``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, fields

import yaml

from .gradient_delay import parse_setting, setting_text

RECONS = ("gridding", "cgsense", "imunne", "altun", "dune", "flat", "cs")
NETWORK_RECONS = ("imunne", "altun", "dune", "flat")
COIL_MAP_METHODS = ("espirit", "lowres")
OVERLOAD_POLICIES = ("none", "reduce", "skip")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


#: most spokes per frame a header or a configuration may ask for: the frame buffer holds
#: that many spokes before the first frame
MAX_SPOKES_PER_FRAME = 4096


@dataclass
class ReconConfig:
    #: reconstruction method
    recon: str = "cgsense"
    #: spokes per frame (0: the stream's frame markers, else the header's encodingLimits or
    #: spokes_per_frame user parameter, else 13; see gadgets/frames.py)
    spokes_per_frame: int = 0
    #: a new frame every this many spokes (0: = spokes_per_frame, no sliding window)
    frame_stride: int = 0
    #: radial ordering used when acquisitions carry no trajectory (empty: from the header)
    ordering: str = ""
    #: prewhiten with the noise acquisitions (false when Gadgetron's NoiseAdjustGadget did it)
    prewhiten: bool = True
    #: PCA coil compression to this many virtual coils (0: off)
    virtual_coils: int = 0
    #: spokes used to compute the compression matrix (held back until they are in: the first
    #: frames' latency grows with them; 13, one frame, is the realtime preset's)
    compression_spokes: int = 64
    #: coil maps: espirit (sigpy, in the background) or lowres (fast, on the frame path)
    coil_maps: str = "espirit"
    #: frames pooled for coil-map calibration
    calibration_frames: int = 10
    #: first ESPIRiT maps from this many frames, on a first_maps_grid grid (3.5-4.5x faster than
    #: the full one), until the full maps from calibration_frames frames replace them (0: none;
    #: also none with wait_for_maps). 4 frames of 13 spokes sample the 24x24 calibration block
    first_maps_frames: int = 4
    first_maps_grid: int = 64
    #: lowres maps (the fallback until ESPIRiT's, and coil_maps: lowres) are zero outside the
    #: region where the low-resolution image exceeds this fraction of its maximum, holes
    #: filled (recon_core.coils.support_mask; 0: nowhere zero)
    lowres_support: float = 0.1
    #: ESPIRiT maps are also zero where the calibration image, combined with them, is below this
    #: fraction of its maximum, holes filled (recon_core.coils.espirit_maps; 0: ESPIRiT's eigenvalue
    #: crop alone, which keeps a margin of air around the body). On the shifted suite's 96-frame val
    #: scans (unpaced) 0.05 raised the real-time model from 34.57 / 0.933 to 34.65 / 0.951 and the
    #: streaming CS peer from 34.04 / 0.941 to 34.08 / 0.952, with no body pixel lost; from 0.12 the
    #: dim body wall of the low-SNR scan falls below it and the lungs are cut (docs/performance.md)
    espirit_support: float = 0.05
    #: recompute maps every this many frames from the latest calibration window (0: never)
    coil_map_refresh: int = 0
    #: hold frames until the ESPIRiT maps exist (reproducible offline); else use lowres maps meanwhile
    wait_for_maps: bool = False
    #: install each ESPIRiT update exactly this many frames after the frame that started it,
    #: waiting for it if need be (0: as soon as it is ready, which depends on the CPU's load).
    #: For unpaced replays that should give the same images on every run; 15 is about when a
    #: paced run on the 2-core CPU installs them (gadgets/coilmaps.py)
    espirit_lag: int = 0
    #: the same for the first maps (first_maps_frames)
    first_maps_lag: int = 0
    #: radial gradient delays: auto (RING estimate from the stream's first calibration_frames
    #: frames), off, or "dx,dy[,dxy]" in readout samples (recon_core/gradient_delay.py)
    gradient_delay: str = "auto"
    #: CG-SENSE iterations and Tikhonov weight
    cg_iterations: int = 8
    cg_lambda: float = 0.0
    #: recon cs (streaming temporal TV, recon_core/streaming_cs.py): weight relative to
    #: max|A^H y| of the window, and primal-dual iterations per window (3 cost about what the
    #: real-time network's 2 updates of a 2-frame window cost); lam: the best on the shifted
    #: suite's val part, 31.83 dB (31.67-31.83 for 0.005-0.08: at 3 iterations TV acts little)
    cs_lambda: float = 0.005
    cs_iterations: int = 3
    #: a partial last frame with at least this fraction of its spokes is reconstructed
    min_partial_fraction: float = 0.5
    #: torch device ("cpu", "cuda", "cuda:1")
    device: str = "cpu"
    #: path of the network model, or the name of a shipped one (``imunne_rt``: the real-time
    #: model); empty: the model shipped for ``recon``
    model: str = ""
    #: network fixed point: maximum iterations and relative-change tolerance
    max_iterations: int = 20
    tolerance: float = 1e-3
    #: streaming window of frames for the network, and look-ahead frames within it
    window: int = 5
    lookahead: int = 2
    #: per-frame latency budget in ms for the fixed point (0: none)
    deadline_ms: float = 0.0
    #: warm start the fixed point from the previous window
    warm_start: bool = True
    #: bounded input queue (in frames of spokes) and the policy when frames fall more than
    #: queue_size frame intervals behind: none (full quality; the bounded queue slows the
    #: sender, as TCP does), reduce (fewer iterations), skip (drop to the newest frame)
    queue_size: int = 8
    overload: str = "none"
    #: prepare each frame (its NUFFTs) and run the stream's gadgets on a thread of their own,
    #: ahead of the reconstruction (false: all on the reconstruction's thread)
    pipeline: bool = True
    #: CPU threads of each torch/NUFFT call (0: half the cores, at least 1, so that the
    #: preparation thread and ESPIRiT have the other half; process-wide, set at chain start)
    threads: int = 0
    #: forward every image to a live viewer (``rtcine view``) at this URL (empty: off)
    view_url: str = ""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)
        need(self.recon in RECONS, f"recon={self.recon!r}: expected one of {RECONS}")
        need(self.coil_maps in COIL_MAP_METHODS, f"coil_maps={self.coil_maps!r}: expected one of {COIL_MAP_METHODS}")
        need(self.overload in OVERLOAD_POLICIES, f"overload={self.overload!r}: expected one of {OVERLOAD_POLICIES}")
        need(self.ordering in ("", "golden", "tiny-golden", "linear"),
             f"ordering={self.ordering!r}: expected golden, tiny-golden or linear")
        for name in ("spokes_per_frame", "frame_stride", "virtual_coils", "coil_map_refresh", "espirit_lag", "cg_iterations",
                     "threads", "first_maps_frames", "first_maps_lag"):
            need(getattr(self, name) >= 0, f"{name}={getattr(self, name)}: must be >= 0")
        for name in ("calibration_frames", "compression_spokes", "max_iterations", "window", "queue_size"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)}: must be >= 1")
        need(self.first_maps_grid == 0 or self.first_maps_grid >= 24,
             f"first_maps_grid={self.first_maps_grid}: 0 (the full grid) or at least the 24-wide calibration block")
        need(0.0 <= self.lowres_support < 1.0, f"lowres_support={self.lowres_support}: must be in [0, 1)")
        need(0.0 <= self.espirit_support < 1.0, f"espirit_support={self.espirit_support}: must be in [0, 1)")
        need(self.spokes_per_frame <= MAX_SPOKES_PER_FRAME,
             f"spokes_per_frame={self.spokes_per_frame}: at most {MAX_SPOKES_PER_FRAME}")
        need(0 <= self.lookahead < self.window, f"lookahead={self.lookahead}: must be in [0, window)")
        need(0.0 < self.min_partial_fraction <= 1.0, f"min_partial_fraction={self.min_partial_fraction}: must be in (0, 1]")
        need(self.cs_lambda >= 0 and self.cs_iterations >= 1, "cs_lambda must be >= 0 and cs_iterations >= 1")
        need(self.cg_lambda >= 0 and self.tolerance >= 0 and self.deadline_ms >= 0,
             "cg_lambda, tolerance and deadline_ms must be >= 0")
        need(self.view_url == "" or self.view_url.startswith(("http://", "https://")),
             f"view_url={self.view_url!r}: expected http://HOST:PORT/ of an `rtcine view`")
        need(self.device == "cpu" or self.device.startswith("cuda"), f"device={self.device!r}: expected cpu or cuda[:N]")
        try:
            parse_setting(self.gradient_delay)
        except ValueError as exc:
            raise ConfigError(f"gradient_delay={self.gradient_delay!r}: {exc}") from None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict, preset: str | None = None) -> "ReconConfig":
        """Build from a mapping of typed values or strings (chain XML gives strings), over a
        preset: ``preset`` (the command line's, which wins), else ``values["preset"]``, else
        the one :func:`preset_for` picks. Keys given override the preset's."""
        values = dict(values)
        named = values.pop("preset", None)
        named = preset or (str(named).strip() if named is not None else None) or None
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {unknown}; known keys: {sorted(known)} "
                              f"and 'preset' ({', '.join(sorted(presets()))})")
        merged = dict(preset_values(preset_for(values, named), values))
        merged.update(values)
        base = cls()
        typed = {key: _coerce(key, value, type(getattr(base, key))) for key, value in merged.items()}
        return cls(**typed)

    @classmethod
    def from_preset(cls, name: str, **keys) -> "ReconConfig":
        """The preset ``name`` with ``keys`` over it (``from_preset("cgsense", coil_maps="lowres")``)."""
        return cls.from_mapping(keys, preset=name)

    @staticmethod
    def read_yaml(path: str) -> dict:
        """The mapping of a YAML configuration file (safe-loaded; keys checked by :meth:`from_mapping`)."""
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of configuration keys, got {type(data).__name__}")
        return data

    @classmethod
    def from_yaml(cls, path: str, preset: str | None = None) -> "ReconConfig":
        return cls.from_mapping(cls.read_yaml(path), preset=preset)

    def replace(self, **changes) -> "ReconConfig":
        return dataclasses.replace(self, **changes)


#: folder of the named presets, one ``NAME.yaml`` each: ``description`` (one line for
#: ``--help`` and errors), optional ``extends`` (another preset, applied first), ``keys``
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
#: the preset of a configuration that names neither ``preset`` nor ``recon``
DEFAULT_PRESET = "realtime"


@functools.lru_cache(maxsize=None)
def presets() -> dict:
    """``{name: {"description": str, "keys": dict}}`` of every preset file (``extends`` resolved)."""
    raw = {}
    for entry in sorted(os.listdir(PRESETS_DIR)):
        if entry.endswith(".yaml"):
            with open(os.path.join(PRESETS_DIR, entry)) as f:
                raw[entry[:-5]] = yaml.safe_load(f) or {}
    known = set(ReconConfig.keys())
    out = {}

    def resolve(name, seen=()):
        if name in out:
            return out[name]
        if name in seen or name not in raw:
            raise ConfigError(f"preset file {name}.yaml: 'extends' chain {' -> '.join(seen + (name,))} is broken")
        spec = raw[name]
        keys = dict(spec.get("keys") or {})
        bad = sorted(set(keys) - known)
        if bad or not isinstance(spec, dict):
            raise ConfigError(f"preset file {name}.yaml: unknown configuration key(s) {bad}")
        base = resolve(spec["extends"], seen + (name,))["keys"] if spec.get("extends") else {}
        out[name] = {"description": " ".join(str(spec.get("description", "")).split()), "keys": {**base, **keys}}
        return out[name]

    for name in raw:
        resolve(name)
    return out


def preset_for(values: dict, named: str | None = None) -> str | None:
    """The preset under the keys ``values``: ``named``; else, when ``values`` name a
    ``recon``, the preset of that name or none (the field defaults); else the default."""
    if named:
        return named
    recon = values.get("recon")
    if recon is None:
        return DEFAULT_PRESET
    recon = str(recon).strip()
    return recon if recon in presets() else None


def preset_values(name: str | None, values: dict | None = None) -> dict:
    """The keys of the preset ``name`` (empty for None) under the keys ``values``: when
    ``values`` change its ``recon`` and name no ``model``, the preset's model (which belongs
    to its recon) is left out. An unknown name raises :class:`ConfigError` listing the presets."""
    if name is None:
        return {}
    table = presets()
    if name not in table:
        raise ConfigError(f"preset {name!r}: no such preset; presets: "
                          + "; ".join(f"{n} ({p['description'].split(':')[0]})" for n, p in sorted(table.items())))
    keys = dict(table[name]["keys"])
    values = values or {}
    if "recon" in values and str(values["recon"]).strip() != keys.get("recon") and "model" not in values:
        keys.pop("model", None)
    return keys


def _coerce(key: str, value, kind: type):
    if key == "gradient_delay":
        value = setting_text(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if kind is int:
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if not isinstance(value, float) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected an integer") from None
    if kind is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported type {kind}")
