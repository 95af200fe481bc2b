"""The workload files in tuning/workloads: they load, build specs, match the networks they name."""
import itertools
import json
import pathlib
import re

import pytest

from nbconv.problems import load_workload
from nbconv.spec import DIRECTIONS

WORKLOADS = pathlib.Path(__file__).resolve().parent.parent / "tuning" / "workloads"
FILES = sorted(WORKLOADS.glob("*.json"))

#: network workloads (one problem per distinct layer, batch 1) -> (distinct layers, convolutions)
NETWORKS = {
    "resnet50": (23, 53),
    "resnext50": (24, 53),
    "mobilenetv2": (30, 52),
    "deeplab": (12, 16),
    "c3d": (7, 8),
    "dcgan": (6, 10),
    "wavenet": (14, 123),
}


def _load(stem):
    return load_workload(str(WORKLOADS / f"{stem}.json"))[1]


def _count(name):
    """Occurrences of a deduplicated layer in its network: the ' (xN)' suffix of its name."""
    m = re.search(r" \(x(\d+)\)$", name)
    return int(m.group(1)) if m else 1


def _by_name(problems):
    return {re.sub(r" \(x\d+\)$", "", p.name): p for p in problems}


def _y(p):
    return tuple(p.spec("forward").user_y_shape)


def test_network_workload_files_exist():
    assert set(NETWORKS) <= {f.stem for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda f: f.stem)
def test_workload_loads_and_builds_every_direction(path):
    data = json.loads(path.read_text())
    assert data["name"] == path.stem and data["description"]
    name, problems = load_workload(str(path))
    assert name == path.stem and problems
    assert load_workload(path.stem)[0] == name  # found by name too (package data)
    names = [p.name for p in problems]
    assert len(set(names)) == len(names), "problem names must be unique within a workload"
    for p in problems:
        for d in DIRECTIONS:
            spec = p.spec(d)
            assert spec.direction == d and spec.flops() > 0


@pytest.mark.parametrize("stem", sorted(NETWORKS))
def test_network_workloads_are_distinct_batch1_float32_layers(stem):
    distinct, total = NETWORKS[stem]
    problems = _load(stem)
    assert len(problems) == distinct
    assert sum(_count(p.name) for p in problems) == total
    description = json.loads((WORKLOADS / f"{stem}.json").read_text())["description"]
    assert "batch size 1" in description.lower()
    keys = set()
    for p in problems:
        assert p.input[0] == 1 and p.dtype == "float32" and not p.unshared
        keys.add(p.spec("forward").key())
    assert len(keys) == len(problems), "layers of identical shape and parameters must be merged"


def test_resnet50_facts():
    problems = _load("resnet50")
    stem = problems[0]
    assert stem.name == "conv1"
    assert (stem.input, stem.filters, stem.border_mode, stem.subsample) == (
        (1, 3, 224, 224), (64, 3, 7, 7), 3, 2)
    assert _y(stem) == (1, 64, 112, 112)
    layers = _by_name(problems)
    # v1.5: the stride sits on the 3x3 conv2 of each stage's first block, and on downsample.0
    for stage, (c, hw) in zip((2, 3, 4), ((128, 56), (256, 28), (512, 14))):
        conv2 = layers[f"layer{stage}.0.conv2"]
        assert conv2.filters == (c, c, 3, 3) and conv2.subsample == 2
        assert conv2.input[2:] == (hw, hw)
        assert layers[f"layer{stage}.0.downsample.0"].subsample == 2
        assert layers[f"layer{stage}.0.conv1"].subsample == 1
    assert layers["layer1.0-2.conv3 + layer1.0.downsample.0"].filters == (256, 64, 1, 1)
    assert _count(next(p.name for p in problems if p.name.startswith("layer3.1-5.conv2"))) == 5
    assert _y(layers["layer4.0-2.conv3"]) == (1, 2048, 7, 7)
    # 4.09 G multiply-adds for the convolutions (torchvision's figure, less the fc layer's 2 M)
    macs = sum(_count(p.name) * p.spec("forward").flops() // 2 for p in problems)
    assert macs == 4_087_136_256


@pytest.mark.parametrize("stem", ["resnet50", "resnext50", "mobilenetv2"])
def test_every_layer_input_is_produced_by_another_layer(stem):
    problems = _load(stem)
    first = problems[0]
    produced = {_y(p)[1:] for p in problems}
    if stem != "mobilenetv2":  # the ResNets' 3x3 stride-2 max-pool after the stem
        c, h, w = _y(first)[1:]
        produced.add((c, (h - 1) // 2 + 1, (w - 1) // 2 + 1))
    for p in problems[1:]:
        assert tuple(p.input[1:]) in produced, p.name


def test_resnext50_groups():
    layers = _by_name(_load("resnext50"))
    for stage, width in zip((1, 2, 3, 4), (128, 256, 512, 1024)):
        conv2 = next(p for n, p in layers.items()
                     if n.startswith(f"layer{stage}.") and "conv2" in n)
        assert conv2.num_groups == 32 and conv2.filters == (width, width // 32, 3, 3)


def test_mobilenetv2_depthwise_layers():
    problems = _load("mobilenetv2")
    depthwise = [p for p in problems if p.num_groups > 1]
    assert depthwise
    for p in depthwise:
        assert p.num_groups == p.input[1] == p.filters[0] and p.filters[1:] == (1, 3, 3)
    assert _y(problems[-1]) == (1, 1280, 7, 7)


def test_deeplab_dilations():
    layers = _by_name(_load("deeplab"))
    rates = {}
    for n, p in layers.items():
        # output stride 16 on 512x512 (the ASPP pooling branch runs on the pooled 1x1 map)
        assert p.subsample == 1 and _y(p)[2:] in ((32, 32), (1, 1)), n
        if n.startswith("aspp.convs."):
            assert p.input[1] == 2048 and p.filters[0] == 256
            rates[n] = p.filter_dilation
    assert sorted(r for n, r in rates.items() if layers[n].filters[2:] == (3, 3)) == [6, 12, 18]
    assert layers["layer4.1-2.conv2"].filter_dilation == 2


def test_c3d_shapes():
    problems = _load("c3d")
    assert problems[0].input == (1, 3, 16, 112, 112)
    assert [p.filters[0] for p in problems] == [64, 128, 256, 256, 512, 512, 512]
    assert [_count(p.name) for p in problems] == [1] * 6 + [2]
    for p in problems:
        assert p.nd == 3 and p.filters[2:] == (3, 3, 3) and p.border_mode == 1
        assert _y(p)[2:] == p.input[2:]


def test_dcgan_generator_chains_from_z_to_image():
    problems = _load("dcgan")
    gen = [p for p in problems if p.name.startswith("netG.")]
    assert all(p.op == "transpose" for p in gen)
    # a transposed layer's input is its stored forward conv's output, its output the conv's input
    assert _y(gen[0]) == (1, 100, 1, 1)
    for a, b in itertools.pairwise(gen):
        assert _y(b) == tuple(a.input)
    assert gen[-1].input == (1, 3, 64, 64)


def test_wavenet_causal_layers():
    problems = _load("wavenet")
    causal = [p for p in problems if p.op == "causal"]
    dilated = sorted(p.filter_dilation for p in causal if p.input[1] == 64)
    assert dilated == [2 ** i for i in range(10)]
    for p in causal:
        k, d = p.filters[-1], p.filter_dilation
        assert p.border_mode == (((k - 1) * d, 0),)
        assert _y(p)[2] == p.input[2] == 4096
    assert {p.filters[2:] for p in problems if p.op != "causal"} == {(1,)}
