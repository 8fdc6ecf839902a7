"""What every init spec shares: its canonical description, its argument checks, and what it refuses to fill."""

from __future__ import annotations

import math

import pytest
import torch

from weightsurgery.errors import InitSpecError
from weightsurgery.init import (
    Constant,
    Default,
    KaimingNormal,
    Keep,
    Normal,
    Reset,
    TruncNormal,
    Uniform,
    XavierUniform,
    Zeros,
)


def test_describe_is_canonical_and_leaves_out_defaults() -> None:
    assert TruncNormal(std=0.02).describe() == "trunc_normal(std=0.02)"
    assert KaimingNormal(mode="fan_out", nonlinearity="relu").describe() == (
        "kaiming_normal(mode='fan_out', nonlinearity='relu')"
    )
    assert Zeros().describe() == "zeros"
    assert Constant(0.1).describe() == "constant(0.1)"
    assert Reset().describe() == "reset" and Default is Reset
    assert Keep().describe() == "keep"


def test_fan_based_specs_refuse_tensors_below_two_dims_and_suggest_a_rule() -> None:
    with pytest.raises(InitSpecError, match=r"'head\.bias' has shape \(10,\), but xavier_uniform needs at least 2"):
        XavierUniform().check((10,), key="head.bias")
    with pytest.raises(InitSpecError, match=r"'\*\.bias': 'zeros', '\*': \"kaiming_normal\(mode='fan_out'\)\""):
        KaimingNormal(mode="fan_out").check((), key="scale.bias")
    KaimingNormal().check((4, 3), key="head.weight")
    Zeros().check((), key="scale")


def test_random_specs_refuse_integer_tensors_but_constants_do_not() -> None:
    with pytest.raises(InitSpecError, match=r"'bn\.num_batches_tracked' has dtype torch.int64, but normal draws"):
        Normal().check((), key="bn.num_batches_tracked", dtype=torch.int64)
    Zeros().check((), key="bn.num_batches_tracked", dtype=torch.int64)
    Reset().check((), key="bn.num_batches_tracked", dtype=torch.int64)
    Keep().check((), key="bn.num_batches_tracked", dtype=torch.int64)


@pytest.mark.parametrize("bad", [True, math.inf, math.nan, "1"])
def test_a_numeric_argument_must_be_a_finite_number_and_the_message_gives_the_signature(bad: object) -> None:
    with pytest.raises(InitSpecError, match=r"constant: val=.* must be a finite number; signature constant\(val\)"):
        Constant(bad)  # type: ignore[arg-type]


def test_numbers_are_stored_as_floats_and_bounds_must_be_ordered() -> None:
    assert type(Constant(3).val) is float and Uniform(-1, 1) == Uniform(-1.0, 1.0)
    with pytest.raises(InitSpecError, match=r"uniform: needs a < b, got a=1\.0, b=1\.0"):
        Uniform(1, 1)
    with pytest.raises(InitSpecError, match=r"normal: std=-1\.0 must not be negative"):
        Normal(std=-1)
    with pytest.raises(InitSpecError, match=r"kaiming_normal: mode='fan' is not one of 'fan_in', 'fan_out'"):
        KaimingNormal(mode="fan")  # type: ignore[arg-type]
