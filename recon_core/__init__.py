"""Reconstruction core: tensors and ISMRMRD objects, no Gadgetron imports.

Units used throughout:
- k-space coordinates in cycles per reconstruction pixel, in [-0.5, 0.5)
  (the convention of ISMRMRD ``acq.traj`` and Gadgetron's radial gadgets);
- images on the reconstruction matrix ``(y, x)``, complex64;
- times in seconds unless a name says otherwise (``*_ms``, ``*_ticks``).
"""
