"""Build the shifted suite: ``val/`` and ``test/`` scans per axis, plus an ``indist/`` part
from the training simulator's standard test protocol (the in-distribution column of the
comparison), and ``manifest.json`` describing every file.

    python -m recon_core.shifted_suite build --out runs/shifted [--frames 32] [--val-per-axis 1]
        [--test-per-axis 2] [--indist 2] [--axes motion,snr,coils,anatomy,trajectory]

Existing files are kept (an interrupted build resumes; delete the folder to rebuild).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from .acquisition import acquire, write_scan
from .families import AXES, suite_specs
from .noise import measured_snr

MANIFEST = "manifest.json"
#: seeds of the in-distribution part: the held-out ``test`` split of recon_core.training.data
INDIST_PART = "indist"


def _write_atomic(path: str, writer) -> None:
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    writer(tmp)
    os.replace(tmp, path)


def build_suite(out: str, frames: int = 32, matrix: int = 128, val_per_axis: int = 1, test_per_axis: int = 2,
                indist: int = 2, axes=AXES, log=print) -> dict:
    """Write the suite into ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    manifest_path = os.path.join(out, MANIFEST)
    entries = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            entries = {e["file"]: e for e in json.load(f)["scans"]}
    specs = [("val", s) for s in suite_specs("val", val_per_axis, axes, frames, matrix)]
    specs += [("test", s) for s in suite_specs("test", test_per_axis, axes, frames, matrix)]
    for part, spec in specs:
        rel = os.path.join(part, spec.name + ".h5")
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path) and rel in entries:
            continue
        t0 = time.perf_counter()
        scan = acquire(spec)
        _write_atomic(path, lambda p: write_scan(p, scan))
        entries[rel] = {"file": rel, "part": part, "axis": spec.axis, "spec": asdict(spec),
                        "measured_snr": measured_snr(scan.noise, scan.reference)}
        log(f"{rel}: {spec.axis}, {spec.coils} coils, SNR {spec.snr:.1f}, {spec.ordering}, "
            f"HR {spec.heart_rate_bpm:.0f} bpm, {time.perf_counter() - t0:.1f} s")
        _save(manifest_path, out, entries)
    if indist:
        from ..simulate import simulate, write_dataset
        from ..training.data import split_configs

        for cfg in split_configs("test", indist, frames=frames, matrix=matrix):
            rel = os.path.join(INDIST_PART, f"test_{cfg.seed}.h5")
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path) and rel in entries:
                continue
            t0 = time.perf_counter()
            scan = simulate(cfg)
            _write_atomic(path, lambda p: write_dataset(p, scan))
            entries[rel] = {"file": rel, "part": INDIST_PART, "axis": "in-distribution", "spec": asdict(cfg),
                            "measured_snr": measured_snr(scan.noise, scan.reference)}
            log(f"{rel}: training simulator, test protocol, {time.perf_counter() - t0:.1f} s")
            _save(manifest_path, out, entries)
    return _save(manifest_path, out, entries)


def _save(path: str, out: str, entries: dict) -> dict:
    manifest = {"suite": "shifted", "directory": os.path.abspath(out),
                "scans": sorted(entries.values(), key=lambda e: (e["part"], e["axis"], e["file"]))}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)
    return manifest


def load_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no suite manifest (build it with "
                                f"`python -m recon_core.shifted_suite build --out {directory}`)")
    with open(path) as f:
        return json.load(f)


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/shifted", help="output folder")
    p.add_argument("--frames", type=int, default=32, help="frames per scan (13 spokes each)")
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--val-per-axis", type=int, default=1)
    p.add_argument("--test-per-axis", type=int, default=2)
    p.add_argument("--indist", type=int, default=2, help="in-distribution scans (training simulator, test protocol)")
    p.add_argument("--axes", default=",".join(AXES))


def run_build(args) -> int:
    axes = [a for a in args.axes.split(",") if a]
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise SystemExit(f"unknown axes {unknown}; choose from {AXES}")
    t0 = time.perf_counter()
    m = build_suite(args.out, args.frames, args.matrix, args.val_per_axis, args.test_per_axis, args.indist, axes)
    print(f"suite in {args.out}: {len(m['scans'])} scans ({time.perf_counter() - t0:.0f} s), "
          f"manifest {os.path.join(args.out, MANIFEST)}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recon_core.shifted_suite",
                                description="shifted generalization suite of radial cine scans")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the suite's ISMRMRD files and manifest")
    add_build_arguments(b)
    b.set_defaults(func=run_build)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
