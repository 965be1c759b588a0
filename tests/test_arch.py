"""Base architectures as data and their scaled specs."""

import pytest

from tinyscale.errors import UsageError
from tinyscale.network import arch
from tinyscale.network.arch import (
    BASES,
    StageSpec,
    count_macs,
    count_params,
    get_base,
    scale,
)


def test_b0_has_the_papers_parameter_count():
    spec = scale("efficientnet-b0", 0, classes=1000).spec
    # TPU reference B0: 5,288,548 trainable parameters ("5.3M" in the paper).
    assert count_params(spec) == 5_288_548
    assert round(count_params(spec) / 1e6, 1) == 5.3
    # Keras counts BN's moving mean and variance too.
    assert count_params(spec, include_bn_statistics=True) == 5_330_564


def test_b0_macs_match_the_paper():
    spec = scale("efficientnet-b0", 0, classes=1000).spec
    assert round(count_macs(spec) / 1e9, 2) == 0.39  # paper: 0.39B FLOPs (multiply-adds)
    assert spec.resolution == 224
    assert len(spec.blocks) == 16


def test_stage_string_form_round_trips():
    for base in BASES.values():
        for stage in base.stages:
            assert StageSpec.parse(str(stage)) == stage


@pytest.mark.parametrize("text", ["r1_k3_s11_e1_i32", "r1_k3_s12_e1_i32_o16", "r1_x3_s11_e1_i32_o16", "garbage"])
def test_bad_stage_strings_name_the_problem(text):
    with pytest.raises(UsageError):
        StageSpec.parse(text)


def test_unknown_base_suggests_close_names():
    with pytest.raises(UsageError, match="efficientnet-lite0"):
        get_base("efficientnet-lit0")


def test_lite_is_data_not_branches():
    lite = get_base("efficientnet-lite0")
    b0 = get_base("efficientnet-b0")
    assert lite.activation == "relu6" and b0.activation == "swish"
    assert all(stage.se_ratio == 0 for stage in lite.stages)
    assert all(stage.se_ratio == 0.25 for stage in b0.stages)
    assert [s.repeats for s in lite.stages] == [s.repeats for s in b0.stages]


def test_lite_fixes_stem_and_head_only_when_scaling_up():
    up = scale("efficientnet-lite0", 2).spec
    assert (up.stem_filters, up.head_filters) == (32, 1280)
    down = scale("efficientnet-lite0", -4).spec
    assert down.stem_filters < 32 and down.head_filters < 1280
    fixed = scale("efficientnet-lite0-fixed", -4).spec
    assert (fixed.stem_filters, fixed.head_filters) == (32, 1280)
    assert fixed.blocks[0].in_filters == 32


def test_lite_keeps_first_and_last_stage_repeats_when_scaling_up():
    b0 = scale("efficientnet-b0", 3).spec
    lite = scale("efficientnet-lite0", 3).spec
    assert len(lite.blocks) == len(b0.blocks) - 2 * (arch.round_repeats(1, 1.2**3) - 1)


def test_b0_scales_stem_and_head_with_width():
    spec = scale("efficientnet-b0", -4).spec
    assert spec.head_filters == arch.round_filters(1280, 1.1**-4)
    assert spec.stem_filters == arch.round_filters(32, 1.1**-4)


def test_input_channels_and_classes_are_parameters():
    spec = scale("efficientnet-lite0", -6, classes=7, channels=1).spec
    assert spec.input_shape == (96, 96, 1)
    assert spec.classes == 7
    with pytest.raises(UsageError):
        scale("efficientnet-lite0", 0, channels=2)
    with pytest.raises(UsageError):
        scale("efficientnet-lite0", 0, classes=1)


def test_specs_are_hashable_and_equal_for_nearby_phi():
    a = scale("efficientnet-lite0", -6.0).spec
    b = scale("efficientnet-lite0", -6.0001).spec
    assert a == b and hash(a) == hash(b)
    assert scale("efficientnet-lite0", -3).spec != a


def test_params_and_macs_grow_monotonically_with_phi():
    for base in ("efficientnet-b0", "efficientnet-lite0"):
        previous = (0, 0)
        for step in range(-100, 21):
            spec = scale(base, step / 10).spec
            current = (count_params(spec), count_macs(spec))
            assert current[0] >= previous[0] and current[1] >= previous[1], (base, step / 10)
            previous = current


def test_blocks_stride_only_at_stage_start_and_skip_when_shapes_match():
    spec = scale("efficientnet-b0", 0).spec
    assert [b.stride for b in spec.blocks].count(2) == 4
    for block in spec.blocks:
        assert block.has_skip == (block.stride == 1 and block.in_filters == block.out_filters)
    assert spec.blocks[0].se_filters == 8  # max(1, int(32 * 0.25))
