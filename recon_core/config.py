"""Reconstruction configuration: one validated dataclass, from YAML or from strings.

The same keys are read from a YAML file (``rtcine replay --config``) and from the
``<property name=... value=.../>`` elements of a Gadgetron chain's ``<configuration>``.
Unknown keys and values of the wrong type are rejected with a message that names them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import yaml

RECONS = ("gridding", "cgsense", "imunne", "altun", "dune", "flat")
NETWORK_RECONS = RECONS[2:]
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
    #: spokes per frame (0: from the header's trajectoryDescription, else 13)
    spokes_per_frame: int = 0
    #: a new frame every this many spokes (0: = spokes_per_frame, no sliding window)
    frame_stride: int = 0
    #: radial ordering used when acquisitions carry no trajectory (empty: from the header)
    ordering: str = ""
    #: prewhiten with the noise acquisitions (false when Gadgetron's NoiseAdjustGadget did it)
    prewhiten: bool = True
    #: PCA coil compression to this many virtual coils (0: off)
    virtual_coils: int = 0
    #: spokes used to compute the compression matrix
    compression_spokes: int = 64
    #: coil maps: espirit (sigpy, in the background) or lowres (fast, on the frame path)
    coil_maps: str = "espirit"
    #: frames pooled for coil-map calibration
    calibration_frames: int = 10
    #: recompute maps every this many frames from the latest calibration window (0: never)
    coil_map_refresh: int = 0
    #: hold frames until the ESPIRiT maps exist (reproducible offline); else use lowres maps meanwhile
    wait_for_maps: bool = False
    #: CG-SENSE iterations and Tikhonov weight
    cg_iterations: int = 8
    cg_lambda: float = 0.0
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
        for name in ("spokes_per_frame", "frame_stride", "virtual_coils", "coil_map_refresh", "cg_iterations",
                     "threads"):
            need(getattr(self, name) >= 0, f"{name}={getattr(self, name)}: must be >= 0")
        for name in ("calibration_frames", "compression_spokes", "max_iterations", "window", "queue_size"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)}: must be >= 1")
        need(self.spokes_per_frame <= MAX_SPOKES_PER_FRAME,
             f"spokes_per_frame={self.spokes_per_frame}: at most {MAX_SPOKES_PER_FRAME}")
        need(0 <= self.lookahead < self.window, f"lookahead={self.lookahead}: must be in [0, window)")
        need(0.0 < self.min_partial_fraction <= 1.0, f"min_partial_fraction={self.min_partial_fraction}: must be in (0, 1]")
        need(self.cg_lambda >= 0 and self.tolerance >= 0 and self.deadline_ms >= 0,
             "cg_lambda, tolerance and deadline_ms must be >= 0")
        need(self.view_url == "" or self.view_url.startswith(("http://", "https://")),
             f"view_url={self.view_url!r}: expected http://HOST:PORT/ of an `rtcine view`")
        need(self.device == "cpu" or self.device.startswith("cuda"), f"device={self.device!r}: expected cpu or cuda[:N]")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict) -> "ReconConfig":
        """Build from a mapping of typed values or strings (chain XML gives strings)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {unknown}; known keys: {sorted(known)}")
        typed = {}
        for key, value in values.items():
            typed[key] = _coerce(key, value, type(getattr(cls(), key)))
        return cls(**typed)

    @classmethod
    def from_yaml(cls, path: str) -> "ReconConfig":
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of configuration keys, got {type(data).__name__}")
        return cls.from_mapping(data)

    def replace(self, **changes) -> "ReconConfig":
        return dataclasses.replace(self, **changes)


def _coerce(key: str, value, kind: type):
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
