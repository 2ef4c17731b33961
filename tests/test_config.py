"""Configuration validation: unknown keys, wrong types and bad values name themselves."""
import xml.etree.ElementTree as ET

import pytest

from gadgets.entry import config_from_xml
from recon_core.config import ConfigError, ReconConfig


def test_strings_are_typed():
    cfg = ReconConfig.from_mapping({"recon": "gridding", "cg_iterations": "5", "wait_for_maps": "true",
                                    "cg_lambda": "0.01"})
    assert cfg.cg_iterations == 5 and cfg.wait_for_maps is True and cfg.cg_lambda == 0.01


@pytest.mark.parametrize("values, word", [
    ({"recn": "cgsense"}, "recn"),
    ({"cg_iterations": "many"}, "cg_iterations"),
    ({"wait_for_maps": "perhaps"}, "wait_for_maps"),
    ({"recon": "magic"}, "recon"),
    ({"virtual_coils": "-2"}, "virtual_coils"),
    ({"device": "tpu"}, "device"),
    ({"lowres_support": "1.5"}, "lowres_support"),
])
def test_bad_values_are_named(values, word):
    with pytest.raises(ConfigError, match=word):
        ReconConfig.from_mapping(values)


def test_chain_xml_properties():
    xml = ET.fromstring('<configuration><property name="recon" value="gridding"/>'
                        '<property name="spokes_per_frame" value="21"/></configuration>')
    cfg = config_from_xml(xml)
    assert cfg.recon == "gridding" and cfg.spokes_per_frame == 21
    assert config_from_xml(None) == ReconConfig.from_preset("realtime")     # no configuration: the default preset


def test_yaml_is_safe_loaded(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("recon: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception):
        ReconConfig.from_yaml(str(p))
    p.write_text("recon: gridding\ncg_iterations: 4\n")
    assert ReconConfig.from_yaml(str(p)).cg_iterations == 4


def test_spokes_per_frame_is_bounded():
    from recon_core.config import MAX_SPOKES_PER_FRAME

    with pytest.raises(ConfigError, match=f"spokes_per_frame=100000: at most {MAX_SPOKES_PER_FRAME}"):
        ReconConfig(spokes_per_frame=100000)
