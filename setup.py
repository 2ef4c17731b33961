from setuptools import find_packages, setup

setup(
    name="rtcine",
    version="0.1.0",
    description="Real-time radial cine MRI reconstruction for Gadgetron: CG-SENSE, compressed sensing and "
                "implicit unrolled networks",
    packages=find_packages(include=["recon_core", "recon_core.*", "gadgets", "gadgets.*", "rtcine", "rtcine.*"]),
    package_data={"recon_core": ["models/*.safetensors", "models/*.yaml"]},
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
        # MP4 export (rtcine export --mp4): a wheel with an ffmpeg binary inside
        "video": ["imageio-ffmpeg"],
    },
    entry_points={"console_scripts": ["rtcine=rtcine.cli:main"]},
)
