"""Both ComfyUI generations (2024-03 and 0.3.64) list every pack node, with the declared sockets, tooltips
and descriptions."""

import pytest

from tests.support.pack_info import pack_schemas

pytestmark = pytest.mark.integration


def test_every_pack_node_is_listed(each_comfy_server):
    info = each_comfy_server.object_info()
    missing = [s.node_id for s in pack_schemas() if s.node_id not in info]
    assert not missing, f"nodes missing from /object_info: {missing}\n{each_comfy_server.log_tail()}"
    assert "IMPORT FAILED" not in each_comfy_server.log_text() or "cvd-multiview" not in "\n".join(
        line for line in each_comfy_server.log_text().splitlines() if "IMPORT FAILED" in line)


def test_node_metadata_reaches_the_server(each_comfy_server):
    info = each_comfy_server.object_info()
    for schema in pack_schemas():
        node = info[schema.node_id]
        assert node["category"] == schema.category
        assert node["display_name"] == schema.display_name
        assert node["description"] == schema.description
        declared = [i.name for i in schema.inputs]
        listed = list(node["input"]["required"]) + list(node["input"].get("optional", {}))
        assert listed == declared, f"{schema.node_id}: input order {listed} != schema {declared}"
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{schema.node_id}.{name} has no tooltip"
        assert node["output"] == [o.type for o in schema.outputs]


def test_server_start_time_is_reasonable(each_comfy_server):
    assert each_comfy_server.start_seconds is not None and each_comfy_server.start_seconds < 120
