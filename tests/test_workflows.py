"""The shipped workflows are consistent without a running ComfyUI: API files equal their specs, every Fish S2 node
gets exactly the inputs its schema declares, and each UI file is the same graph as its API file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .comfyui import harness
from .comfyui.harness import REPO
from .comfyui.workflow_specs import WORKFLOWS

WF = REPO / "workflows"


@pytest.fixture(scope="module")
def N(tmp_path_factory):
    return harness.session_pack(tmp_path_factory)[0].nodes


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("stem", list(WORKFLOWS))
def test_api_file_matches_spec(stem):
    assert load(WF / "api" / f"{stem}.json") == WORKFLOWS[stem][1]


@pytest.mark.parametrize("stem", list(WORKFLOWS))
def test_fish_nodes_get_exactly_their_declared_inputs(N, stem):
    for node_id, node in WORKFLOWS[stem][1].items():
        cls = N.get(node["class_type"])
        if cls is None:
            assert not node["class_type"].startswith("FishS2"), node["class_type"]
            continue
        spec = cls.INPUT_TYPES()
        required, optional = set(spec["required"]), set(spec.get("optional", {}))
        given = set(node["inputs"])
        assert required <= given, (stem, node_id, required - given)
        assert given <= required | optional, (stem, node_id, given - required - optional)
        for name, value in node["inputs"].items():
            kind = (spec["required"].get(name) or spec["optional"].get(name))[0]
            if kind == "COMBO" and name not in ("checkpoint", "voice"):
                assert value in (spec["required"].get(name) or spec["optional"][name])[1]["options"], (stem, name)


@pytest.mark.parametrize("stem", list(WORKFLOWS))
def test_ui_file_is_the_same_graph(stem):
    ui, api = load(WF / f"{stem}.json"), WORKFLOWS[stem][1]
    assert ui["version"] == 0.4
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "Note"}
    assert {k: n["type"] for k, n in nodes.items()} == {k: v["class_type"] for k, v in api.items()}
    links = {(str(t), ts): (str(o), os_) for _, o, os_, t, ts, _ in ui["links"]}
    for node_id, node in api.items():
        ui_node = nodes[node_id]
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                slot = next(i for i, x in enumerate(ui_node["inputs"]) if x["name"] == name)
                assert links[(node_id, slot)] == (value[0], value[1]), (stem, node_id, name)
            else:
                assert value in ui_node["widgets_values"], (stem, node_id, name, value)
        if node["class_type"].startswith("FishS2"):
            assert ui_node["properties"]["cnr_id"] == "fishs2"
        if node["class_type"] == "FishS2Generate":
            assert ui_node["widgets_values"][:2] == [node["inputs"]["seed"], "fixed"]
