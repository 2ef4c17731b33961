"""A generalization test suite for real-time radial cine, made by models that share
nothing with the training simulator (:mod:`recon_core.phantom`, :mod:`recon_core.simulate`):

- :mod:`.anatomy`: thorax from random Fourier-series contours (thin structures, dark
  lungs with vessels, a small bright heart with trabeculae, fine texture);
- :mod:`.motion`: cardiac (variable RR, ejection/filling/atrial kick) and respiratory
  (Lujan) motion in continuous time;
- :mod:`.coil_array`: anterior/posterior loop arrays, Biot-Savart sensitivities;
- :mod:`.noise`: coupled-channel noise at a prescribed SNR, noise scans;
- :mod:`.acquisition`: spoke-by-spoke sampling (the object at each spoke's own time) and
  the ISMRMRD file with its reference group;
- :mod:`.families`: the named axes (scan families); :mod:`.build`: the command.

    python -m recon_core.shifted_suite build --out runs/shifted
"""
from .acquisition import ScanSpec, ShiftedScan, acquire, write_scan
from .families import AXES, family_spec, suite_specs

__all__ = ["AXES", "ScanSpec", "ShiftedScan", "acquire", "write_scan", "family_spec", "suite_specs"]
