"""The Gadgetron chain files in chains/: well-formed, loadable, and configured with keys
our gadgets read (no Gadgetron server needed)."""
from __future__ import annotations

import glob
import importlib
import os
import re
import struct
import xml.etree.ElementTree as ET

import pytest

from gadgets.entry import config_from_xml
from recon_core.config import ConfigError, ReconConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAINS = sorted(glob.glob(os.path.join(REPO, "chains", "*.xml")))
IDS = [os.path.basename(c) for c in CHAINS]
#: Gadgetron's headers (installed with the server), to check native gadgets' property names
GADGETRON_INCLUDE = "/opt/gadgetron/include/gadgetron"


def externals(path):
    return list(ET.parse(path).getroot().iter("external"))


def native_gadgets(path):
    return [g.findtext("classname", "").strip() for g in ET.parse(path).getroot().iter("gadget")]


def test_there_are_chains():
    assert {"rtcine_cgsense.xml", "rtcine_gridding.xml", "rtcine_native_prewhiten.xml",
            "rtcine_connect.xml"} <= set(IDS)


@pytest.mark.parametrize("path", CHAINS, ids=IDS)
def test_chain_is_a_gadgetron4_stream_configuration(path):
    root = ET.parse(path).getroot()          # raises on malformed XML
    assert root.tag == "configuration"
    assert root.findtext("version", "").strip() == "2"
    readers = [r.findtext("classname", "").strip() for r in root.iterfind("readers/reader")]
    writers = [w.findtext("classname", "").strip() for w in root.iterfind("writers/writer")]
    assert "AcquisitionReader" in readers
    # Gadgetron drops output items without a writer silently: no ImageWriter, no images
    assert "ImageWriter" in writers
    for node in root.iterfind("readers/reader"):
        assert node.findtext("dll", "").strip() == "gadgetron_core_readers"
    stream = root.find("stream")
    assert stream is not None and len(stream), "empty <stream>"
    last = stream[-1]
    if last.tag == "distributed":           # the workers' stream (rtcine_distributed.xml) ends in it
        assert last.find("stream") is not None and len(last.find("stream")), "empty worker <stream>"
        last = last.find("stream")[-1]
    assert last.tag == "external", "our Python gadget should end the stream"
    assert len(externals(path)) == 1


@pytest.mark.parametrize("path", CHAINS, ids=IDS)
def test_external_target_imports_and_is_callable(path):
    for ext in externals(path):
        execute, connect = ext.find("execute"), ext.find("connect")
        assert (execute is None) != (connect is None), "an <external> needs exactly one of <execute>, <connect>"
        if connect is not None:
            assert 0 < int(connect.get("port")) < 65536
            continue
        assert execute.get("type") == "python"
        module = importlib.import_module(execute.get("name"))
        target = getattr(module, execute.get("target"))
        assert callable(target)


@pytest.mark.parametrize("path", CHAINS, ids=IDS)
def test_configuration_keys_are_recon_config_keys(path):
    known = set(ReconConfig.keys()) | {"preset"}
    for ext in externals(path):
        conf = ext.find("configuration")
        assert conf is not None, "<external> without <configuration>"
        names = [p.get("name") for p in conf.iter("property")]
        assert len(names) == len(set(names)), f"duplicate properties {names}"
        unknown = set(names) - known
        assert not unknown, f"not ReconConfig keys or preset (our gadgets would refuse the chain): {sorted(unknown)}"
        config_from_xml(conf)             # raises ConfigError on a bad value


@pytest.mark.parametrize("path", CHAINS, ids=IDS)
def test_native_and_python_stages_do_not_double_up(path):
    """Prewhitening and coil compression happen once: in Gadgetron or in our gadgets."""
    gadgets = native_gadgets(path)
    cfg = config_from_xml(externals(path)[0].find("configuration"))
    assert cfg.prewhiten == ("NoiseAdjustGadget" not in gadgets)
    if "PCACoilGadget" in gadgets or "CoilReductionGadget" in gadgets:
        assert cfg.virtual_coils == 0
    if "CoilReductionGadget" in gadgets:
        assert gadgets.index("PCACoilGadget") < gadgets.index("CoilReductionGadget"), \
            "CoilReductionGadget keeps the first coils: PCA has to come first"


@pytest.mark.parametrize("path", CHAINS, ids=IDS)
def test_native_gadget_properties_exist(path):
    """Gadgetron ignores unknown properties of its own gadgets: check them against its headers."""
    root = ET.parse(path).getroot()
    gadgets = list(root.iter("gadget"))
    if not gadgets:
        return
    if not os.path.isdir(GADGETRON_INCLUDE):
        pytest.skip(f"no Gadgetron headers in {GADGETRON_INCLUDE} (bash ../shared/gadgetron/install.sh)")
    for gadget in gadgets:
        cls = gadget.findtext("classname").strip()
        header = os.path.join(GADGETRON_INCLUDE, f"{cls}.h")
        assert os.path.exists(header), f"{cls}: no {header}"
        declared = set(re.findall(r"(?:NODE|GADGET)_PROPERTY\w*\(\s*(\w+)", open(header).read()))
        for prop in gadget.iter("property"):
            name = prop.get("name") or prop.findtext("name")
            assert name in declared, f"{cls} has no property {name!r} (it has {sorted(declared)})"


def test_config_from_xml_refuses_bad_chains():
    with pytest.raises(ConfigError, match="magic"):
        config_from_xml(ET.fromstring('<configuration><property name="recon" value="magic"/></configuration>'))
    with pytest.raises(ConfigError, match="cg_iteration"):
        config_from_xml(ET.fromstring('<configuration><property name="cg_iteration" value="3"/></configuration>'))


# -- the scanner emulator's chain messages (gadgets/client.py) ---------------------------------

def test_client_sends_a_local_chain_as_text_and_a_name_as_config_file(tmp_path):
    from gadgets.client import CONFIG_FILE, CONFIG_TEXT, chain_message, chain_properties, parse_server

    local = CHAINS[0]
    msg, payload, _ = chain_message(local)
    text = open(local, "rb").read()
    assert msg == CONFIG_TEXT and payload == struct.pack("<I", len(text)) + text
    msg, payload, _ = chain_message("default.xml")
    assert msg == CONFIG_FILE and len(payload) == 1024 and payload.rstrip(b"\0") == b"default.xml"
    with pytest.raises(FileNotFoundError):
        chain_message(str(tmp_path / "missing" / "chain.xml"))
    assert chain_properties(os.path.join(REPO, "chains", "rtcine_gridding.xml"))["recon"] == "gridding"
    assert chain_properties("default.xml") == {}
    assert parse_server("127.0.0.1:9002") == ("127.0.0.1", 9002)
    assert parse_server("[::1]:9002") == ("::1", 9002)
    with pytest.raises(ConfigError):
        parse_server("9002")
