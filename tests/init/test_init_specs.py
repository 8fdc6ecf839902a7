"""Init specs and the spec parser."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from weightsurgery.errors import InitSpecError
from weightsurgery.init import (
    SPECS,
    CallableSpec,
    Constant,
    Keep,
    Reset,
    KaimingNormal,
    KaimingUniform,
    Normal,
    Ones,
    Orthogonal,
    TruncNormal,
    Uniform,
    XavierNormal,
    XavierUniform,
    Zeros,
    parse_spec,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zeros", Zeros()),
        ("zeros()", Zeros()),
        ("ones", Ones()),
        ("constant(0.1)", Constant(0.1)),
        ("constant(val=-3)", Constant(-3.0)),
        ("trunc_normal(std=0.02)", TruncNormal(std=0.02)),
        ("trunc_normal_(0, 0.02)", TruncNormal(mean=0.0, std=0.02)),
        (" normal( mean=1, std=2 ) ", Normal(1.0, 2.0)),
        ("uniform(-1, 1)", Uniform(-1.0, 1.0)),
        ("xavier_uniform(gain=2)", XavierUniform(2.0)),
        ("xavier_normal", XavierNormal()),
        ("kaiming_normal(mode='fan_out', nonlinearity='relu')", KaimingNormal(mode="fan_out", nonlinearity="relu")),
        ("kaiming_uniform(a=2.5)", KaimingUniform(a=2.5)),
        ("orthogonal(1.5)", Orthogonal(1.5)),
        ("default", Reset()),
        ("reset", Reset()),
        ("keep", Keep()),
    ],
)
def test_parse_reads_names_positional_and_keyword_arguments(text: str, expected: object) -> None:
    assert parse_spec(text) == expected


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
bounds = st.tuples(finite, finite).map(lambda t: (t[0], t[1]) if t[0] < t[1] else (t[1], t[0] + 1.0))
positive = st.floats(min_value=0.0, max_value=1e3, allow_nan=False)
modes = st.sampled_from(["fan_in", "fan_out"])
nonlinearities = st.sampled_from(["linear", "relu", "leaky_relu", "tanh", "selu", "conv2d"])


specs_strategy = st.one_of(
    st.builds(Constant, finite),
    st.just(Zeros()),
    st.just(Ones()),
    bounds.map(lambda ab: Uniform(*ab)),
    st.builds(Normal, finite, positive),
    st.builds(lambda m, s, ab: TruncNormal(m, s, *ab), finite, positive, bounds),
    st.builds(XavierUniform, finite),
    st.builds(XavierNormal, finite),
    st.builds(KaimingUniform, finite, modes, nonlinearities),
    st.builds(KaimingNormal, finite, modes, nonlinearities),
    st.builds(Orthogonal, finite),
    st.just(Reset()),
    st.just(Keep()),
)


@given(specs_strategy)
def test_describe_round_trips_through_the_parser(spec: object) -> None:
    text = spec.describe()  # type: ignore[attr-defined]
    assert parse_spec(text) == spec
    assert parse_spec(text).describe() == text


def test_unknown_name_lists_every_valid_spec_with_its_signature() -> None:
    with pytest.raises(InitSpecError, match=r"unknown init spec 'trunk_normal'.*did you mean 'trunc_normal'") as info:
        parse_spec("trunk_normal(std=0.02)")
    message = str(info.value)
    for cls in SPECS.values():
        assert cls.signature() in message
    assert "kaiming_normal(a=0.0, mode='fan_in', nonlinearity='leaky_relu')" in message


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("normal(sd=1)", r"normal has no argument 'sd'; valid arguments: mean, std"),
        ("kaiming_normal(mode='fan')", r"mode='fan' is not one of 'fan_in', 'fan_out'"),
        ("kaiming_uniform(nonlinearity='gelu')", r"nonlinearity='gelu' is not one of 'linear'.*'selu'"),
        ("uniform(2, 1)", r"uniform: needs a < b, got a=2.0, b=1.0"),
        ("normal(std=-1)", r"std=-1.0 must not be negative"),
        ("normal(std='big')", r"std='big' must be a finite number"),
        ("constant(True)", r"val=True must be a finite number"),
        ("constant", r"'constant': missing a required argument; signature constant\(val\)"),
        ("zeros(1)", r"zeros takes at most 0 positional argument"),
        ("normal(0, mean=1)", r"argument 'mean' given twice"),
        ("normal(", r"is not valid syntax"),
        ("normal(std=x)", r"argument 'x' is not a literal"),
        ("normal(**{'std': 1})", r"\*args and \*\*kwargs are not allowed"),
        ("__import__('os').system('true')", r"must be a spec name or one call with literal arguments"),
        ("torch.nn.init.zeros_", r"must be a spec name or one call"),
    ],
)
def test_bad_strings_name_the_problem_and_the_valid_choices(text: str, pattern: str) -> None:
    with pytest.raises(InitSpecError, match=pattern) as info:
        parse_spec(text)
    assert "Valid init specs:" in str(info.value)


def test_non_spec_objects_are_refused() -> None:
    with pytest.raises(InitSpecError, match=r"init spec 5 has type int; give a spec string"):
        parse_spec(5)  # type: ignore[arg-type]


def test_spec_objects_and_argument_free_classes_pass_through() -> None:
    spec = TruncNormal(std=0.1)
    assert parse_spec(spec) is spec
    assert parse_spec(Zeros) == Zeros()
    with pytest.raises(InitSpecError, match="missing a required argument"):
        parse_spec(Constant)


@pytest.mark.parametrize(
    "spec",
    [
        Uniform(-0.5, 0.5),
        Normal(std=0.1),
        TruncNormal(std=0.02),
        XavierUniform(),
        XavierNormal(),
        KaimingUniform(),
        KaimingNormal(mode="fan_out"),
        Orthogonal(),
    ],
)
def test_random_specs_draw_only_from_their_generator(spec: object) -> None:
    a, b = torch.empty(6, 5), torch.empty(6, 5)
    torch.manual_seed(1)
    spec(a, generator=torch.Generator().manual_seed(3))  # type: ignore[operator]
    torch.manual_seed(2)
    spec(b, generator=torch.Generator().manual_seed(3))  # type: ignore[operator]
    assert torch.equal(a, b)
    assert a.std() > 0


def test_specs_fill_with_the_torch_init_they_name() -> None:
    t = torch.empty(2000)
    TruncNormal(mean=1.0, std=0.5, a=0.5, b=1.2)(t, generator=torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0.5 and float(t.max()) <= 1.2
    w = torch.empty(8, 8)
    Orthogonal()(w, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)
    c = torch.empty(3, dtype=torch.int64)
    Constant(4)(c, generator=torch.Generator())
    assert c.tolist() == [4, 4, 4]


def fill_with_seven(tensor: torch.Tensor) -> None:
    tensor.fill_(7.0)


def test_callable_without_generator_is_seeded_through_a_forked_global_rng() -> None:
    plain = parse_spec(lambda t: t.normal_())
    assert isinstance(plain, CallableSpec)
    assert not plain.takes_generator
    a, b = torch.empty(5), torch.empty(5)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    plain(a, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(1)
    plain(b, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_callable_with_generator_receives_it() -> None:
    seen = []

    def init_fn(tensor: torch.Tensor, generator: torch.Generator | None = None) -> None:
        seen.append(generator)
        tensor.zero_()

    spec = parse_spec(init_fn)
    assert isinstance(spec, CallableSpec) and spec.takes_generator
    g = torch.Generator()
    spec(torch.empty(2), generator=g)  # type: ignore[operator]
    assert seen == [g]
    assert parse_spec(nn.init.trunc_normal_).takes_generator  # type: ignore[attr-defined]


def test_callable_is_described_by_its_qualified_name() -> None:
    assert parse_spec(fill_with_seven).describe() == f"{__name__}.fill_with_seven"
    assert parse_spec(nn.init.zeros_).describe() == "torch.nn.init.zeros_"


def test_callable_that_cannot_take_a_tensor_is_refused() -> None:
    def needs_two(tensor: torch.Tensor, scale: float) -> None:
        tensor.fill_(scale)

    with pytest.raises(InitSpecError, match=r"needs_two must accept the tensor as its only required argument"):
        parse_spec(needs_two)
