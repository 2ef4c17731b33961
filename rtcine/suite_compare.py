"""``rtcine compare --suite shifted``: every method side by side on the in-distribution and
the shifted scans of a suite built by ``python -m recon_core.shifted_suite build``.

Each file goes through the chain's own input stages (:func:`gadgets.frames_from_file.load_frames`:
noise prewhitening from its noise scans, frames of its header's spokes per frame); coil
maps are ESPIRiT from the first ``calibration_frames`` frames, cropped to the object
(``ReconConfig.espirit_support``), as the chain and the training data make them. Offline
methods reconstruct all frames of a scan at once; streaming methods are the chain itself,
replayed at scanner pace (:func:`gadgets.replay.replay`, ``realtime=True``; ``paced=False``:
unpaced, with the deadline and the overload policy off, i.e. the schedule's full per-window
budget, a measure of its quality that does not depend on the machine's load): the real-time
network (the ``realtime`` preset) and the streaming CS peer (``recon: cs``, same windows, warm
start, deadline and overload policy).

Weights that a user would tune (``cs``, ``bart``, ``cs-stream`` lambdas) are chosen on
the suite's ``val`` part (best mean PSNR) and then fixed for the ``test`` part and the
in-distribution scans. Scores: magnitude PSNR and SSIM after least-squares scaling, per
frame against the file's reference, averaged over frames, then over the scans of an axis;
``shifted`` is the mean over all test scans. Results are cached per method and file
(``<suite>/compare_cache.json``; network entries are keyed by the model file's path and
the modification time of it and its YAML), so scoring a new model recomputes only that model.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import numpy as np

#: offline methods and the streaming methods (through the chain at scanner pace)
OFFLINE = ("gridding", "cgsense", "cs", "bart", "cunet", "altun", "imunne", "dune", "flat")
STREAMING = ("realtime", "cs-stream")
ALL_METHODS = OFFLINE + STREAMING
NETWORK_FILES = {"cunet": "cunet_small.safetensors", "altun": "altun_small.safetensors",
                 "imunne": "imunne_small.safetensors", "realtime": "imunne_rt_small.safetensors",
                 "dune": "dune_small.safetensors", "flat": "flat_small.safetensors"}
LAM_GRIDS = {"cs": (0.002, 0.005, 0.01, 0.02, 0.04), "bart": (0.0005, 0.001, 0.002, 0.005, 0.01),
             "cs-stream": (0.005, 0.01, 0.02, 0.04, 0.08)}
CACHE = "compare_cache.json"
#: unpaced streaming replays install the ESPIRiT maps this many frames after calibration
#: starts (``ReconConfig.espirit_lag``): about when a paced run on the 2-core CPU gets them
UNPACED_ESPIRIT_LAG = 15
#: the same for the first maps (``first_maps_lag``; started when the pool holds 4 frames, at
#: scanner pace on the 2-core CPU they were installed at frame 9-10)
UNPACED_FIRST_MAPS_LAG = 6


def load_scan_file(path: str, calibration_frames: int = 10) -> dict:
    """A suite file as arrays: ``kspace (T, C, S, R)`` prewhitened, ``coords (T, S, R, 2)``,
    ``maps (C, N, N)`` ESPIRiT cropped to the object, ``reference (T, N, N)`` (complete frames
    only), through the chain's input stages as training on recorded files takes them
    (:func:`gadgets.recorded_scans.prepare_recorded`)."""
    from gadgets.recorded_scans import prepare_recorded

    scan = prepare_recorded(path, 1, calibration_frames=calibration_frames, with_reference=True)[0]
    if "reference" not in scan:
        raise ValueError(f"{path}: no reference images for its frames (/dataset/reference)")
    return {k: scan[k] for k in ("kspace", "coords", "maps", "reference")}


@functools.lru_cache(maxsize=1)
def _preset_digest() -> str:
    """Short digest of the realtime preset's settings, which the streaming methods run with
    (read once per process)."""
    import hashlib

    from recon_core.config import ReconConfig

    settings = sorted(dataclasses.asdict(ReconConfig.from_preset("realtime")).items())
    return hashlib.sha1(repr(settings).encode()).hexdigest()[:10]


def _score(images: np.ndarray, reference: np.ndarray) -> dict:
    from recon_core.evaluation import score

    n = min(len(images), len(reference))
    m = score(images[:n], reference[:n])["mean"]
    return {"psnr": m["psnr"], "ssim": m["ssim"], "frames": n}


class Runner:
    """Reconstructs and scores (method, file) pairs, with the cache."""

    def __init__(self, suite_dir: str, model_dir: str, imunne_max_iter: int = 50, bart_iterations: int = 30,
                 cs_iterations: int = 20, log=print, use_cache: bool = True, paced: bool = True,
                 cached_only: bool = False, stream_overrides: dict | None = None):
        self.dir, self.model_dir, self.log, self.paced = suite_dir, model_dir, log, paced
        self.stream_overrides = dict(stream_overrides or {})    # ReconConfig fields over the realtime preset
        self.cached_only, self.use_cache = cached_only, use_cache
        self.imunne_max_iter, self.bart_iterations, self.cs_iterations = imunne_max_iter, bart_iterations, cs_iterations
        self.cache_path = os.path.join(suite_dir, CACHE)
        self.cache = {}
        if use_cache and os.path.exists(self.cache_path):
            with open(self.cache_path) as f:
                self.cache = json.load(f)
        self._scans: dict = {}
        self._models: dict = {}

    # -- helpers ---------------------------------------------------------------------
    def model_file(self, method: str) -> str:
        path = os.path.join(self.model_dir, NETWORK_FILES[method])
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no {method} model in --model-dir {self.model_dir}")
        return path

    def key(self, method: str, rel: str, lam: float | None = None) -> str:
        from recon_core.config import ReconConfig

        parts = [method, rel]
        if lam is not None:
            parts.append(f"lam={lam:g}")
        if method in NETWORK_FILES:
            path = self.model_file(method)
            from recon_core.networks.checkpoint import model_files
            stamp = max(os.path.getmtime(p) for p in model_files(path) if os.path.exists(p))   # arch lives in the YAML
            parts.append(f"{os.path.abspath(path)}@{stamp:.0f}")
        if method == "imunne":
            parts.append(f"maxit={self.imunne_max_iter}")
        if method == "cs-stream":
            parts.append(f"csit={ReconConfig().cs_iterations}")
        if method in STREAMING:
            parts.append(f"preset={_preset_digest()}")      # a changed realtime preset is not a cached result
        else:                                               # offline rows run on the loader's cropped maps
            parts.append(f"maps-support={ReconConfig.espirit_support:g}")
        if method in STREAMING and not self.paced:
            parts.append(f"unpaced|espirit-lag={UNPACED_ESPIRIT_LAG},{UNPACED_FIRST_MAPS_LAG}")
        if method in STREAMING and self.stream_overrides:
            parts.append("overrides=" + ",".join(f"{k}={v}" for k, v in sorted(self.stream_overrides.items())))
        return "|".join(parts)

    def scan(self, rel: str) -> dict:
        if rel not in self._scans:
            self._scans = {rel: load_scan_file(os.path.join(self.dir, rel))}     # one scan in memory
        return self._scans[rel]

    def save(self) -> None:
        """Merge into the cache file (another compare may have added entries meanwhile). Without
        ``use_cache`` the lookups stay this run's own results: the file's entries are written
        back, never read as results."""
        merged = dict(self.cache)
        if os.path.exists(self.cache_path):
            try:
                with open(self.cache_path) as f:
                    merged = {**json.load(f), **self.cache}
            except ValueError:
                pass
        if self.use_cache:
            self.cache = merged
        tmp = f"{self.cache_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(merged, f, indent=0)
        os.replace(tmp, self.cache_path)

    # -- methods -----------------------------------------------------------------------
    def _offline(self, method: str, scan: dict, lam: float | None) -> np.ndarray:
        import torch

        k, c, m = scan["kspace"], scan["coords"], scan["maps"]
        if method in ("gridding", "cgsense"):
            from recon_core.evaluation import classical_methods
            return classical_methods()[method](k, c, m)
        if method == "cs":
            from recon_core.compressed_sensing import temporal_tv
            with torch.no_grad():
                return temporal_tv(torch.from_numpy(k), torch.from_numpy(c), torch.from_numpy(m), lam=lam,
                                   iterations=self.cs_iterations).numpy()
        if method == "bart":
            from recon_core.bart_io import pics
            return pics(k, c, m, lam, self.bart_iterations)[0]
        from recon_core.networks.evaluation import network_method
        from recon_core.training.checkpoint import load_checkpoint
        if method not in self._models:
            model, meta, _ = load_checkpoint(self.model_file(method))
            kw = {"max_iter": self.imunne_max_iter, "tol": 1e-3} if meta["kind"] == "imunne" else {}
            self._models[method] = network_method(model, **kw)
        return self._models[method](k, c, m)

    def streamed(self, method: str, path: str, lam: float | None = None) -> tuple:
        """``(images (T, Y, X), latency and rate)`` of a streaming method (realtime, cs-stream)
        replayed through the chain on the ISMRMRD file ``path``, paced or not as the runner."""
        from gadgets.images import image_frame
        from gadgets.replay import replay
        from recon_core.config import ReconConfig

        if method == "realtime":
            cfg = ReconConfig.from_preset("realtime", model=self.model_file("realtime"))
        else:
            cfg = ReconConfig.from_preset("realtime", recon="cs", model="", cs_lambda=lam)
        cfg = dataclasses.replace(cfg, **self.stream_overrides)
        if not self.paced:          # the schedule's full budget: no deadline, no overload policy, and the
            # ESPIRiT maps installed at the frame a paced run gets them, not whenever the thread finishes
            cfg = dataclasses.replace(cfg, deadline_ms=0.0, overload="none", espirit_lag=UNPACED_ESPIRIT_LAG,
                                      first_maps_lag=UNPACED_FIRST_MAPS_LAG)
        summary = replay(path, cfg, realtime=self.paced, warm=True)
        images = np.stack([image_frame(i) for i in summary["images_list"]])
        lat = summary["latency_ms"]
        extra = {"p50_ms": lat["p50"], "p99_ms": lat.get("p99", lat["max"]), "max_ms": lat["max"],
                 "keeps_up": summary["output_fps"] / summary["acquisition_fps"], "images": len(images)}
        return images, extra

    def run(self, method: str, rel: str, lam: float | None = None) -> dict:
        key = self.key(method, rel, lam)
        if key in self.cache:
            return self.cache[key]
        if self.cached_only:
            return None
        path = os.path.join(self.dir, rel)
        t0 = time.perf_counter()
        if method in STREAMING:
            from recon_core.mrd import read_images
            from recon_core.shifted_suite.acquisition import REFERENCE_GROUP
            from gadgets.images import image_frame
            images, extra = self.streamed(method, path, lam)
            reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
        else:
            scan = self.scan(rel)
            t0 = time.perf_counter()
            images, extra = self._offline(method, scan, lam), {}
            reference = scan["reference"]
        seconds = time.perf_counter() - t0
        result = {**_score(images, reference), **extra, "ms_per_frame": 1e3 * seconds / max(len(images), 1)}
        self.cache[key] = result
        self.save()
        self.log(f"  {method:10s} {rel:28s}" + (f" lam={lam:<7g}" if lam is not None else " " * 12)
                 + f" PSNR {result['psnr']:6.2f} SSIM {result['ssim']:.3f} {result['ms_per_frame']:7.1f} ms/frame")
        return result


def tune(runner: Runner, method: str, val_files: list[str], grid, extend: int = 3) -> tuple[float, dict]:
    """Best lambda of ``method`` on the val files (mean PSNR); returns ``(lam, {lam: psnr})``.
    When the best is at an end of the grid, the grid grows past it by factors of 2 (at most
    ``extend`` times), so the optimum found is interior."""
    curve = {}

    def value(lam):
        if lam not in curve:
            rs = [runner.run(method, rel, lam) for rel in val_files]
            if any(r is None for r in rs):           # cached_only and not all computed
                return None
            curve[lam] = float(np.mean([r["psnr"] for r in rs]))
        return curve[lam]

    for lam in grid:
        value(lam)
    if not curve:
        return None, {}
    for _ in range(extend):
        best = max(curve, key=curve.get)
        if best == max(curve):
            value(float(f"{2 * best:.3g}"))
        elif best == min(curve):
            value(float(f"{best / 2:.3g}"))
        else:
            break
    best = max(curve, key=curve.get)
    return best, dict(sorted(curve.items()))


def compare_suite(suite_dir: str, methods: list[str], model_dir: str, parts=("indist", "test"), log=print,
                  imunne_max_iter: int = 50, lam_grids: dict | None = None, use_cache: bool = True,
                  paced: bool = True, cached_only: bool = False, stream_overrides: dict | None = None) -> dict:
    """Run the comparison (``stream_overrides``: ReconConfig fields set over the realtime preset
    for the streaming methods, cached apart from the preset's results); returns ``{"tuned": {method: {lam, curve}}, "rows": {method: {column:
    {psnr, ssim, n, ...}}}, "columns": [...], "per_scan": {method: {file: result}}}``."""
    from recon_core.shifted_suite.build import load_manifest
    from recon_core.shifted_suite.families import AXES

    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {ALL_METHODS}")
    if "bart" in methods:
        from recon_core.bart_io import bart_available
        if bart_available() is None:
            log("bart is not on PATH: the bart row is skipped")
            methods = [m for m in methods if m != "bart"]
    manifest = load_manifest(suite_dir)
    scans = manifest["scans"]
    val = [e["file"] for e in scans if e["part"] == "val"]
    runner = Runner(suite_dir, model_dir, imunne_max_iter=imunne_max_iter, log=log, use_cache=use_cache, paced=paced,
                    cached_only=cached_only, stream_overrides=stream_overrides)
    grids = {**LAM_GRIDS, **(lam_grids or {})}
    tuned = {}
    for method in methods:
        if method in grids:
            if not val:
                raise FileNotFoundError(f"{suite_dir}: no val scans to tune {method}'s lambda on")
            log(f"tuning {method} lambda on {len(val)} val scans: {list(grids[method])}")
            lam, curve = tune(runner, method, val, grids[method])
            if lam is None:
                log(f"  {method}: no cached val results")
                continue
            tuned[method] = {"lam": lam, "val_psnr": curve}
            log(f"  {method}: best lam {lam:g} (val PSNR {curve[lam]:.2f})")
    targets = [e for e in scans if e["part"] in parts]
    per_scan = {m: {} for m in methods}
    for e in targets:
        log(f"{e['file']} ({e['axis']})")
        for method in methods:
            if method in grids and method not in tuned:
                continue
            r = runner.run(method, e["file"], tuned.get(method, {}).get("lam"))
            if r is not None:
                per_scan[method][e["file"]] = r
    columns = []
    if "indist" in parts:
        columns.append("in-distribution")
    axes = [a for a in AXES if any(e["axis"] == a and e["part"] == "test" for e in targets)]
    columns += axes + (["shifted"] if axes else [])

    def members(col):
        if col == "in-distribution":
            return [e["file"] for e in targets if e["part"] == "indist"]
        if col == "shifted":
            return [e["file"] for e in targets if e["part"] == "test"]
        return [e["file"] for e in targets if e["part"] == "test" and e["axis"] == col]

    rows = {}
    for method in methods:
        rows[method] = {}
        for col in columns:
            rs = [per_scan[method][f] for f in members(col) if f in per_scan[method]]
            if not rs:
                continue
            agg = {k: float(np.mean([r[k] for r in rs])) for k in ("psnr", "ssim", "ms_per_frame")}
            for k in ("p99_ms", "keeps_up"):
                if k in rs[0]:
                    agg[k] = float(np.max([r[k] for r in rs])) if k == "p99_ms" else float(np.min([r[k] for r in rs]))
            agg["n"] = len(rs)
            rows[method][col] = agg
    return {"suite": os.path.abspath(suite_dir), "model_dir": os.path.abspath(model_dir), "tuned": tuned,
            "streaming": "at scanner pace" if paced else "unpaced (no deadline, no overload policy)",
            "columns": columns, "sizes": {c: len(members(c)) for c in columns}, "rows": rows, "per_scan": per_scan}


LABELS = {"gridding": "gridding", "cgsense": "CG-SENSE (8 it.)", "cs": "t-TV CS, ours (offline)",
          "bart": "BART pics t-TV (offline)", "cunet": "CU-Net", "altun": "Alt-UN", "imunne": "IMUNNE (fixed point)",
          "realtime": "real-time model, streaming", "cs-stream": "streaming t-TV CS peer"}


def format_table(result: dict) -> str:
    """Markdown table (a column scored on fewer scans than the others, e.g. from a partial
    cache, shows that count in parentheses): one row per method, ``PSNR / SSIM`` per column; lambdas and the
    streaming methods' worst p99 latency and keep-up ratio in the last column."""
    cols = result["columns"]
    head = "| method | " + " | ".join(cols) + " | notes |"
    lines = [head, "|" + " --- |" * (len(cols) + 2)]
    for method, row in result["rows"].items():
        if not row:
            continue
        full = result["sizes"]
        cells = [(f"{row[c]['psnr']:.2f} / {row[c]['ssim']:.3f}" + ("" if row[c]["n"] == full[c] else f" ({row[c]['n']})"))
                 if c in row else "-" for c in cols]
        notes = []
        if method in result["tuned"]:
            notes.append(f"lam {result['tuned'][method]['lam']:g} (val)")
        any_col = next(iter(row.values()), {})
        if "p99_ms" in any_col and result.get("streaming", "at scanner pace") == "at scanner pace":
            p99 = max(r["p99_ms"] for r in row.values())
            keep = min(r["keeps_up"] for r in row.values())
            notes.append(f"p99 {p99:.0f} ms, output/acq. rate {keep:.2f}")
        else:
            notes.append(f"{np.mean([r['ms_per_frame'] for r in row.values()]):.0f} ms/frame")
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " | " + ", ".join(notes) + " |")
    lines.append("")
    lines.append(f"streaming methods replayed {result.get('streaming', 'at scanner pace')}")
    lines.append("PSNR dB / SSIM (magnitude, LS-scaled, per frame, mean over frames then scans); scans per column: "
                 + ", ".join(f"{c} {result['sizes'][c]}" for c in cols))
    return "\n".join(lines)
