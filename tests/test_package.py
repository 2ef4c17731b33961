"""What a user installs: the version they can ask for, and the files the package serves."""
from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys

import rtcine


def test_version_is_the_installed_packages():
    out = subprocess.run([sys.executable, "-m", "rtcine", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"rtcine {rtcine.__version__}"
    assert importlib.metadata.version("rtcine") == rtcine.__version__


def test_metadata_names_licence_and_python():
    meta = importlib.metadata.metadata("rtcine")
    assert meta["License"] or meta["License-Expression"]
    assert meta["Requires-Python"] == ">=3.10"


def test_viewer_page_files_are_package_data():
    from gadgets.viewer import LiveViewer

    page = importlib.resources.files("gadgets").joinpath("viewer_page")
    names = {p.name for p in page.iterdir()}
    assert {"index.html", "viewer.js", "viewer.css"} <= names
    html = LiveViewer(title="a title").page().decode()
    assert "<title>a title</title>" in html and 'src="viewer.js"' in html and 'href="viewer.css"' in html
    assert "function render" in LiveViewer().page("viewer.js").decode()
