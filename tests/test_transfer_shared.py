"""Shared tensors end to end: the report says exactly what happened to tied, aliased and overlapping tensors."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model
from torch import nn

from weightsurgery import transfer
from weightsurgery.convert import convert_checkpoint
from weightsurgery.errors import SharedMemoryConflictError
from weightsurgery.match.plan import Plan
from weightsurgery.sources import resolve


class TiedLM(nn.Module):
    """A GPT-2-like toy: the head is the embedding."""

    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight


def fill(model: nn.Module, start: float = 0.0) -> nn.Module:
    """Distinct, recognisable values in every tensor."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + 100 * i + start)
    return model


# --- 1. a tied source alias is used, not unused ------------------------------------------------------


@pytest.mark.parametrize("form", ["module", "state_dict", "pickle"])
def test_tied_source_into_tied_target_is_exact_under_strict(form: str, tmp_path) -> None:
    src = fill(TiedLM())
    target = TiedLM()
    torch_copy = TiedLM()
    accepted = torch_copy.load_state_dict(src.state_dict(), strict=True)  # torch accepts it
    assert accepted.missing_keys == [] and accepted.unexpected_keys == []
    if form == "module":
        source: object = src
    elif form == "state_dict":
        source = src.state_dict()
    else:
        torch.save(src.state_dict(), tmp_path / "lm.pth")
        source = tmp_path / "lm.pth"
    report = transfer(source, target, strict=True)
    assert report.unused == () and report.unexpected_keys == [] and report.missing_keys == []
    assert report.mapping == {"wte.weight": "wte.weight", "body.weight": "body.weight", "body.bias": "body.bias"}
    assert report.records["lm_head.weight"].status == "tied"
    assert report.records["lm_head.weight"].alias_of == "wte.weight"
    assert report.to_dict()["unused"] == [] and report.coverage == 1.0
    assert target.lm_head.weight is target.wte.weight
    assert torch.equal(target.wte.weight, src.wte.weight) and torch.equal(target.body.weight, src.body.weight)


def test_an_untied_source_head_with_other_values_stays_unused() -> None:
    src = fill(TiedLM(tied=False))
    report = transfer(src, TiedLM())
    assert report.unused == ("lm_head.weight",)  # its values went nowhere: the tied target holds wte's


# --- 2. safetensors alias metadata is read back -------------------------------------------------------


def test_save_model_file_fills_an_untied_target_from_the_alias(tmp_path) -> None:
    src = fill(TiedLM())
    save_model(src, str(tmp_path / "lm.safetensors"))
    with safe_open(str(tmp_path / "lm.safetensors"), "pt") as fh:
        stored, header = list(fh.keys()), fh.metadata()
    (dropped,) = {"wte.weight", "lm_head.weight"} - set(stored)
    assert header[dropped] in ("wte.weight", "lm_head.weight")  # safetensors' {alias: kept} convention
    target = TiedLM(tied=False)
    report = transfer(tmp_path / "lm.safetensors", target, strict=True)
    assert report.mapping == {k: k for k in ("wte.weight", "body.weight", "body.bias", "lm_head.weight")}
    assert report.initialized == [] and report.unused == ()
    assert torch.equal(target.lm_head.weight, src.wte.weight) and torch.equal(target.wte.weight, src.wte.weight)
    assert target.lm_head.weight.data_ptr() != target.wte.weight.data_ptr()  # still two tensors


def test_save_model_file_into_a_tied_target_is_exact_under_strict(tmp_path) -> None:
    src = fill(TiedLM())
    save_model(src, str(tmp_path / "lm.safetensors"))
    target = TiedLM()
    report = transfer(tmp_path / "lm.safetensors", target, strict=True)
    assert report.unused == () and report.missing_keys == [] and report.records["lm_head.weight"].status == "tied"
    assert torch.equal(target.wte.weight, src.wte.weight) and target.lm_head.weight is target.wte.weight


def test_convert_written_aliases_are_keys_again(tmp_path) -> None:
    src = fill(TiedLM())
    torch.save(src.state_dict(), tmp_path / "lm.pth")
    done = convert_checkpoint(tmp_path / "lm.pth", tmp_path / "lm.safetensors")
    assert dict(done.aliases) == {"lm_head.weight": "wte.weight"}
    target = TiedLM(tied=False)
    report = transfer(tmp_path / "lm.safetensors", target)
    assert report.records["lm_head.weight"].status == "loaded" and report.records["lm_head.weight"].source == (
        "lm_head.weight"
    )
    assert torch.equal(target.lm_head.weight, src.wte.weight)


def test_a_metadata_entry_that_names_no_tensor_is_not_an_alias(tmp_path) -> None:
    save_file({"weight": torch.ones(2, 1)}, tmp_path / "m.safetensors", metadata={"arch": "mlp", "bias": "b0"})
    with resolve(tmp_path / "m.safetensors") as ckpt:
        assert ckpt.keys() == ["weight"] and "tied" not in ckpt.metadata
    report = transfer(tmp_path / "m.safetensors", nn.Linear(1, 2), init="zeros")
    assert report.mapping == {"weight": "weight"} and report.initialized == ["bias"] and report.unused == ()


# --- 3. a re-applied plan's unused comes from the checkpoint applied ---------------------------------------


def test_reapplied_plan_recomputes_unused_from_the_checkpoint(tmp_path) -> None:
    src = fill(nn.Sequential(nn.Linear(2, 3)))
    first = transfer({**src.state_dict(), "extra": torch.ones(1)}, nn.Sequential(nn.Linear(2, 3)))
    assert first.unused == ("extra",)
    first.plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").unused == ("extra",)

    target = nn.Sequential(nn.Linear(2, 3))
    again = transfer(src.state_dict(), target, plan=tmp_path / "plan.json", strict=True)
    assert again.unused == () and again.unexpected_keys == [] and again.to_dict()["unused"] == []
    assert torch.equal(target[0].weight, src[0].weight)

    other = transfer({**src.state_dict(), "other": torch.zeros(2)}, nn.Sequential(nn.Linear(2, 3)),
                     plan=tmp_path / "plan.json")
    assert other.unused == ("other",) and other.unexpected_keys == ["other"] and other.plan.unused == ("other",)


# --- 11. target tensors that share memory without being tied ----------------------------------------------


class Overlapping(nn.Module):
    """Two parameters over one tensor's bytes: ``row`` is the first row of ``full``, not tied by identity."""

    def __init__(self) -> None:
        super().__init__()
        base = torch.zeros(3, 2)
        self.full = nn.Parameter(base)
        self.row = nn.Parameter(base[0])


def test_overlapping_target_tensors_with_different_sources_raise_and_change_nothing() -> None:
    target = Overlapping()
    before = target.full.detach().clone()
    source = {"full": torch.arange(6.0).reshape(3, 2), "row": torch.tensor([7.0, 8.0])}
    with pytest.raises(SharedMemoryConflictError, match=r"full \(from source 'full'\) and row \(from source 'row'\)") as err:
        transfer(source, target)
    assert err.value.keys == (("full", "row"),)
    assert err.value.sources == {"full": "from source 'full'", "row": "from source 'row'"}
    assert torch.equal(target.full, before) and target.row.data_ptr() == target.full.data_ptr()


def test_overlapping_target_tensors_that_agree_both_load() -> None:
    target = Overlapping()
    full = torch.arange(6.0).reshape(3, 2)
    report = transfer({"full": full, "row": full[0].clone()}, target)
    assert report.mapping == {"full": "full", "row": "row"}
    assert torch.equal(target.full, full) and torch.equal(target.row, full[0])


def test_an_overlapping_leftover_that_would_be_overwritten_is_a_conflict() -> None:
    target = Overlapping()
    with pytest.raises(SharedMemoryConflictError, match=r"row \(from the fallback init\)"):
        transfer({"full": torch.arange(6.0).reshape(3, 2)}, target, init="constant(5.0)")
    assert torch.equal(target.full, torch.zeros(3, 2))


class SameView(nn.Module):
    """Two parameters over one view of one tensor, not tied by identity."""

    def __init__(self) -> None:
        super().__init__()
        base = torch.zeros(2, 2)
        self.a, self.b = nn.Parameter(base), nn.Parameter(base)


def test_two_parameters_over_the_same_view_are_tied() -> None:
    target = SameView()
    src = torch.arange(4.0).reshape(2, 2)
    report = transfer({"a": src, "b": src + 10}, target)
    assert report.records["b"].status == "tied" and report.records["b"].alias_of == "a"
    assert report.mapping == {"a": "a"} and report.unused == ("b",)  # b's own values went nowhere
    assert torch.equal(target.a, src) and torch.equal(target.b, src)


# --- 12. an in-memory source that is the target itself ------------------------------------------------------


def test_swapping_two_weights_of_the_model_with_itself() -> None:
    model = fill(nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)))
    first, second = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    report = transfer(model, model, key_map={"0.weight": "1.weight", "1.weight": "0.weight"}, strict=True)
    assert report.mapping == {"0.weight": "1.weight", "1.weight": "0.weight"}
    assert torch.equal(model[0].weight, second) and torch.equal(model[1].weight, first)


def test_shifting_a_state_dict_view_of_the_target() -> None:
    model = fill(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = model.state_dict()  # views of the model's own tensors
    explicit = {f"{(i + 1) % 3}.{n}": f"{i}.{n}" for i in range(3) for n in ("weight", "bias")}
    report = transfer(state, model, key_map=explicit)
    assert report.mapping == explicit
    for tgt, src in explicit.items():
        assert torch.equal(model.state_dict()[tgt], before[src]), tgt


def test_two_parameters_over_one_meta_view_stay_one_tensor_when_materialized() -> None:
    with torch.device("meta"):
        target = SameView()
    src = torch.arange(4.0).reshape(2, 2)
    report = transfer({"a": src}, target)
    assert report.records["b"].status == "tied" and report.missing_keys == []
    assert target.a is not target.b and target.a.data_ptr() == target.b.data_ptr()  # two objects, one view
    assert torch.equal(target.b, src)


def test_a_dry_run_says_that_apply_will_check_overlapping_views() -> None:
    target = Overlapping()
    source = {"full": torch.arange(6.0).reshape(3, 2), "row": torch.tensor([7.0, 8.0])}
    note = (
        "target tensors full and row share memory (views of one tensor): apply raises "
        "SharedMemoryConflictError unless the values they would get agree"
    )
    report = transfer(source, target, dry_run=True)
    assert report.warnings == (note,) and report.mapping == {"full": "full", "row": "row"}
    assert torch.equal(target.full, torch.zeros(3, 2))
    assert transfer(source, nn.Linear(2, 3), dry_run=True, key_map={"weight": "full"}).warnings == ()
