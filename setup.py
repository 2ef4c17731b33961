import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
#: one version, in rtcine/__init__.py (``rtcine --version`` prints it)
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "rtcine" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="rtcine",
    version=VERSION,
    description="Real-time radial cine MRI reconstruction for Gadgetron: CG-SENSE, compressed sensing and "
                "implicit unrolled networks",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    author="rtcine maintainers",
    keywords="MRI, Gadgetron, ISMRMRD, radial, real-time cine, reconstruction, unrolled networks",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Healthcare Industry",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
    packages=find_packages(include=["recon_core", "recon_core.*", "gadgets", "gadgets.*", "rtcine", "rtcine.*"]),
    package_data={"recon_core": ["models/*.safetensors", "models/*.yaml", "presets/*.yaml"],
                  "gadgets": ["viewer_page/*.html", "viewer_page/*.js", "viewer_page/*.css"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy>=1.26",
        "ismrmrd>=1.14",
        "gadgetron>=1.4.1",
        "sigpy>=0.1.26",
        "finufft>=2.2",
        "torchkbnufft>=1.4",
        "h5py",
        "pyyaml",
        "safetensors",
        "tqdm",
        "matplotlib",
        "pillow",
    ],
    extras_require={
        "test": ["pytest", "selenium", "hypothesis"],
        # the documentation site (mkdocs build --strict; .ci/run builds it)
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
        # MP4 export (rtcine export --mp4): a wheel with an ffmpeg binary inside
        "video": ["imageio-ffmpeg"],
    },
    entry_points={"console_scripts": ["rtcine=rtcine.cli:main"]},
)
