"""Chip TOML loading, mesh presets and torus topology mapping (Cloud TPU docs, scaling book)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from backends.tpu_sim.chips import (
    REQUIRED,
    available_chips,
    load_chip,
    load_preset,
    mesh_presets,
)
from backends.tpu_sim.topology import Topology, parse_shape, topology_for
from spmd.errors import SimulationError

CHIPS = ["v4", "v5e", "v5p", "v6e", "h100_sxm", "cpu_host"]


@pytest.mark.parametrize("name", CHIPS)
def test_every_chip_file_loads(name: str):
    chip = load_chip(name)
    assert chip.peak_flops_bf16 > 0
    assert chip.hbm_bytes > 0
    assert chip.hbm_bandwidth > 0
    assert chip.link_bandwidth > 0


def test_available_chips_lists_every_file():
    assert set(CHIPS) <= set(available_chips())


def test_published_figures():
    # Cloud TPU docs / scaling book ch. "TPUs" tables.
    assert load_chip("v5e").peak_flops_bf16 == 1.97e14
    assert load_chip("v4").max_chips == 4096  # v4 pod: 4096 chips, 16x16x16
    assert load_chip("v5p").max_chips == 8960  # v5p pod: 8960 chips
    assert load_chip("v6e").mxu_dim == 256
    assert load_chip("v5p").mxu_dim == 128
    assert load_chip("h100_sxm").links_per_chip * load_chip("h100_sxm").link_bandwidth == 4.5e11


def test_unknown_chip_lists_known_ones():
    with pytest.raises(SimulationError, match="unknown chip 'v9'") as e:
        load_chip("v9")
    for name in CHIPS:
        assert name in str(e.value)
    assert "SPMD_CONFIG_PATH" in str(e.value)


def test_user_chip_in_spmd_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    text = Path(load_chip.__code__.co_filename).resolve().parents[2] / "configs/chips/v5e.toml"
    (tmp_path / "chips").mkdir()
    custom = text.read_text().replace('name = "v5e"', 'name = "mychip"')
    (tmp_path / "chips" / "mychip.toml").write_text(custom)
    monkeypatch.setenv("SPMD_CONFIG_PATH", str(tmp_path))
    assert "mychip" in available_chips()
    assert load_chip("mychip").peak_flops_bf16 == 1.97e14


def test_toml_missing_a_field_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "chips").mkdir()
    (tmp_path / "chips" / "broken.toml").write_text(
        "[compute]\npeak_flops_bf16 = 1.0\n[memory]\n[interconnect]\n"
    )
    monkeypatch.setenv("SPMD_CONFIG_PATH", str(tmp_path))
    with pytest.raises(SimulationError, match=r"lacks \[compute\] field\(s\) peak_flops_int8"):
        load_chip("broken")


def test_every_required_field_is_in_every_chip_file():
    for name in CHIPS:
        chip = load_chip(name)
        for fields in REQUIRED.values():
            for field in fields:
                assert hasattr(chip, field)


def test_mesh_presets_fit_their_chip():
    presets = mesh_presets()
    assert presets["v5e-256"] == ("v5e", (16, 16))
    assert presets["v4-4096"] == ("v4", (16, 16, 16))
    assert math.prod(presets["v5p-8960"][1]) == 8960
    for name in presets:
        chip, shape = load_preset(name)
        topology_for(chip, shape)  # raises if it does not fit


def test_unknown_preset_lists_known_ones():
    with pytest.raises(SimulationError, match="v5e-256"):
        load_preset("v5e-3")


def test_v5e_wraps_only_on_axes_of_16():
    # Scaling book ch. "TPUs": v5e/v6e have wraparound only on a full 16-chip axis.
    v5e = load_chip("v5e")
    assert topology_for(v5e, (16, 16)).wraparound == (True, True)
    assert topology_for(v5e, (8, 4)).wraparound == (False, False)
    assert topology_for(v5e, (4, 16)).wraparound == (False, True)


def test_v4_wraps_on_full_cubes():
    # Cloud TPU v4 docs: wraparound for slices of 4x4x4 and up.
    v4 = load_chip("v4")
    assert topology_for(v4, (4, 4, 4)).wraparound == (True, True, True)
    assert topology_for(v4, (2, 2, 2)).wraparound == (False, False, False)
    assert topology_for(v4, (16, 16, 16)).ring(2).wraparound


def test_2d_mesh_on_3d_chip_uses_two_physical_axes():
    topology = topology_for(load_chip("v4"), (16, 16))
    assert topology.shape == (16, 16)
    ring = topology.ring(1)
    assert (ring.n, ring.wraparound, ring.links_per_direction) == (16, True, 1)


def test_explicit_topology_folds_mesh_axes():
    topology = topology_for(load_chip("v4"), (8, 8), explicit="4x4x4")
    assert topology.shape == (4, 4, 4)
    assert [p.n for p in topology.parts(0)] == [4, 2]
    assert [p.n for p in topology.parts(1)] == [2, 4]
    assert topology.ring(0).n == 8


def test_one_axis_mesh_spans_whole_pod():
    topology = topology_for(load_chip("v5e"), (256,))
    assert topology.shape == (16, 16)
    assert len(topology.parts(0)) == 2


def test_three_axis_mesh_on_2d_chip_merges_minor_axes():
    topology = topology_for(load_chip("v5e"), (2, 4, 8))
    assert topology.shape == (8, 8)
    assert topology.parts(0)[0].stride == 4  # the major half of physical axis 0


def test_mesh_too_big_for_pod_is_refused_unless_it_fills_whole_slices():
    with pytest.raises(SimulationError, match="needs 384 chips but a v5e pod has 256"):
        topology_for(load_chip("v5e"), (24, 16))
    two = topology_for(load_chip("v5e"), (32, 16))  # 2 x v5e-256 joined by DCN
    assert two.num_slices == 2 and two.slices_of(0) == 2 and two.slices_of(1) == 1
    assert math.prod(p.n for p in two.parts(0)) == 16 and two.shape == (16, 16)
    with pytest.raises(SimulationError, match="major axes"):
        topology_for(load_chip("v5e"), (1, 3, 4), slices=2)
    with pytest.raises(SimulationError, match="does not fit"):
        topology_for(load_chip("v5e"), (2, 128), explicit="2x128")
    with pytest.raises(SimulationError, match="has 64 chips but mesh"):
        topology_for(load_chip("v4"), (4, 4), explicit="4x4x4")


def test_bad_topology_inputs():
    with pytest.raises(SimulationError, match="cannot read topology"):
        parse_shape("4by4")
    with pytest.raises(SimulationError, match="differ in rank"):
        Topology((4, 4), (True,))
    with pytest.raises(SimulationError, match="out of range"):
        Topology((4,), (False,)).ring(3)


def test_switch_chip_has_one_physical_axis():
    topology = topology_for(load_chip("h100_sxm"), (2, 4))
    assert topology.kind == "switch"
    assert topology.ring(1).n == 4
    assert topology.ring(1).switch
