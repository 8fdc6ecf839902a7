"""Unwrapping nested training checkpoints: the choice rule, key=, and its errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from weightsurgery.errors import AmbiguousContainerError, EmptyCheckpointError, UnknownContainerError
from weightsurgery.sources.nested import EMA_KEYS, WRAPPER_KEYS, Unwrapped, scalars, select_prefix, unwrap


def _sd(value: float = 1.0, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        [(f"{prefix}conv.weight", torch.full((2, 1, 3, 3), value)), (f"{prefix}conv.bias", torch.full((2,), value))]
    )


def _value(found_tensors: dict[str, torch.Tensor]) -> float:
    return next(iter(found_tensors.values())).flatten()[0].item()


def test_flat_state_dict_is_taken_whole_with_empty_container() -> None:
    sd = _sd()
    found = unwrap(sd)
    assert found.container == ()
    assert list(found.tensors) == ["conv.weight", "conv.bias"]
    assert found.tensors["conv.weight"] is sd["conv.weight"]
    assert found.alternatives == () and found.ignored == ()


def test_non_tensor_leaves_of_a_state_dict_are_ignored_and_reported() -> None:
    sd = {**_sd(), "_metadata": {"": {"version": 1}}, "num_batches": 7}
    found = unwrap(sd)
    assert list(found.tensors) == ["conv.weight", "conv.bias"]
    assert found.ignored == ("_metadata", "num_batches")
    assert found.details()["ignored"] == ["_metadata", "num_batches"]


@pytest.mark.parametrize("wrapper", sorted(WRAPPER_KEYS | EMA_KEYS))
def test_each_known_wrapper_key_is_unwrapped(wrapper: str) -> None:
    found = unwrap({wrapper: _sd(), "epoch": 3, "arch": "resnet18"})
    assert found.container == (wrapper,)
    assert list(found.tensors) == ["conv.weight", "conv.bias"]


def test_lightning_checkpoint_keeps_the_model_prefix() -> None:
    ckpt = {
        "epoch": 9,
        "global_step": 1000,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": _sd(prefix="model."),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}],
        "lr_schedulers": [{"last_epoch": 9}],
        "callbacks": {"EarlyStopping": {"best_score": torch.tensor(0.5)}},
        "hyper_parameters": {"lr": 0.1},
    }
    found = unwrap(ckpt)
    assert found.container == ("state_dict",)
    assert list(found.tensors) == ["model.conv.weight", "model.conv.bias"]
    assert found.alternatives == ()
    assert scalars(ckpt) == {"epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.4.0"}


def test_doubly_wrapped_ddp_checkpoint_records_the_whole_path() -> None:
    found = unwrap({"model": {"module": _sd()}, "optimizer": {"state": {}, "param_groups": []}})
    assert found.container == ("model", "module")


def test_regular_weights_win_over_ema_and_ema_is_an_alternative() -> None:
    found = unwrap({"state_dict": _sd(1.0), "state_dict_ema": _sd(2.0)})
    assert found.container == ("state_dict",)
    assert _value(found.tensors) == 1.0
    assert found.alternatives == ("state_dict_ema",)
    assert found.details() == {"alternatives": ["state_dict_ema"]}


def test_ema_wins_over_an_unknown_name() -> None:
    found = unwrap({"model_ema": _sd(2.0), "teacher": _sd(3.0)})
    assert found.container == ("model_ema",)
    assert found.alternatives == ("teacher",)


def test_a_lone_unknown_container_is_taken() -> None:
    assert unwrap({"generator": _sd(), "step": 5}).container == ("generator",)


def test_key_overrides_the_choice_and_lists_the_others() -> None:
    found = unwrap({"model": _sd(1.0), "model_ema": _sd(2.0)}, key="model_ema")
    assert found.container == ("model_ema",)
    assert _value(found.tensors) == 2.0
    assert found.alternatives == ("model",)


def test_dotted_key_walks_into_nested_containers() -> None:
    ckpt = {"model": {"module": _sd(1.0)}, "ema": {"module": _sd(2.0)}}
    found = unwrap(ckpt, key="ema.module")
    assert found.container == ("ema", "module")
    assert _value(found.tensors) == 2.0


def test_key_naming_an_outer_container_unwraps_below_it() -> None:
    assert unwrap({"ema": {"module": _sd()}, "model": _sd()}, key="ema").container == ("ema", "module")


def test_key_that_is_a_literal_dotted_name_wins_over_walking() -> None:
    ckpt = {"a.b": _sd(1.0), "a": {"b": _sd(2.0)}}
    assert _value(unwrap(ckpt, key="a.b").tensors) == 1.0


def test_key_as_a_prefix_selects_and_strips_it() -> None:
    ckpt = {**_sd(1.0, prefix="model_ema."), **_sd(2.0, prefix="model.")}
    found = unwrap(ckpt, key="model_ema")
    assert list(found.tensors) == ["conv.weight", "conv.bias"]
    assert _value(found.tensors) == 1.0
    assert found.container == ("model_ema",)
    assert found.prefix == "model_ema."


def test_key_prefix_inside_a_nested_container() -> None:
    found = unwrap({"state_dict": _sd(prefix="ema."), "epoch": 1}, key="ema")
    assert found.container == ("state_dict", "ema")
    assert list(found.tensors) == ["conv.weight", "conv.bias"]


def test_unknown_key_lists_containers_and_prefixes() -> None:
    ckpt = {"model": _sd(prefix="backbone."), "model_ema": _sd()}
    with pytest.raises(UnknownContainerError, match=r"key='ema' names no container.*model, model_ema, backbone") as info:
        unwrap(ckpt, key="ema", source="ckpt.pth")
    assert info.value.key == "ema"
    assert info.value.available == ("model", "model_ema", "backbone", "conv")
    assert "ckpt.pth" in str(info.value)


def test_key_naming_a_tensor_is_unknown() -> None:
    with pytest.raises(UnknownContainerError, match=r"key='conv.weight' names no container"):
        unwrap(_sd(), key="conv.weight")


def test_equal_ranks_are_ambiguous_and_name_every_candidate() -> None:
    with pytest.raises(AmbiguousContainerError, match=r"generator, discriminator; choose one with key=") as info:
        unwrap({"generator": _sd(), "discriminator": _sd()}, source="gan.pth")
    assert info.value.candidates == ("generator", "discriminator")
    assert isinstance(info.value, KeyError)


def test_two_regular_containers_are_ambiguous() -> None:
    with pytest.raises(AmbiguousContainerError, match=r"model, state_dict"):
        unwrap({"model": _sd(), "state_dict": _sd()})


def test_key_resolves_an_ambiguity() -> None:
    assert unwrap({"generator": _sd(1.0), "discriminator": _sd(2.0)}, key="discriminator").container == (
        "discriminator",
    )


def test_prefix_present_in_several_state_dicts_is_ambiguous() -> None:
    with pytest.raises(AmbiguousContainerError, match=r"key='ema' is a key prefix in several state dicts"):
        unwrap({"a": _sd(prefix="ema."), "b": _sd(prefix="ema.")}, key="ema")


@pytest.mark.parametrize("mapping", [{"epoch": 3, "optimizer": {"state": {}}}, {"config": {"lr": 0.1}}])
def test_a_mapping_without_tensors_is_empty(mapping: dict[str, object]) -> None:
    with pytest.raises(EmptyCheckpointError, match=r"opt\.pth holds no tensors.*pass the file or object"):
        unwrap(mapping, source="opt.pth")


def test_an_empty_mapping_is_an_empty_state_dict() -> None:
    assert unwrap({}) == Unwrapped(tensors={}, container=())
    assert unwrap({"model": {}, "epoch": 1}, key="model") == Unwrapped(tensors={}, container=("model",))


def test_tensors_only_inside_ignored_training_state_are_not_weights() -> None:
    with pytest.raises(EmptyCheckpointError, match=r"epoch \(int\), optimizer \(dict\)"):
        unwrap({"epoch": 1, "optimizer": {"exp_avg": torch.zeros(2)}})


def test_select_prefix_lists_real_prefixes_when_missing() -> None:
    with pytest.raises(UnknownContainerError, match=r"prefixes are: encoder, decoder"):
        select_prefix(["encoder.w", "decoder.w", "scale"], "ema", source="m.safetensors")


_names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)


@given(
    chain=st.lists(st.sampled_from(sorted(WRAPPER_KEYS)), min_size=0, max_size=3),
    keys=st.lists(_names, min_size=1, max_size=5, unique=True),
    extras=st.dictionaries(st.sampled_from(["epoch", "step", "arch", "seed"]), st.integers(), max_size=3),
)
def test_any_chain_of_wrappers_unwraps_to_the_same_tensors(
    chain: list[str], keys: list[str], extras: dict[str, int]
) -> None:
    sd = {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}
    ckpt: dict[str, object] = sd
    for wrapper in reversed(chain):
        ckpt = {wrapper: ckpt, **extras}
    found = unwrap(ckpt)
    assert found.container == tuple(chain)
    assert found.tensors == sd
    if chain:
        assert unwrap(ckpt, key=".".join(chain)).tensors == sd
