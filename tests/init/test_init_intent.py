"""Leftover init follows the model's own intent: a built target keeps its constructor's values, a
factory target built on meta gets them computed for exactly its leftovers, and re-init happens
only when ``init=`` asks for it."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from torch import nn

from weightsurgery import transfer
from weightsurgery.factory import build

pytestmark = pytest.mark.filterwarnings("ignore:only .* of the target's parameters")


def my_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear) and module.out_features != 1024:
        nn.init.normal_(module.weight, mean=0, std=0.01)
        nn.init.constant_(module.bias, 0.5)


class Net(nn.Module):
    """The seed workflow: the init is written in the constructor."""

    builds: list[tuple[bool, bool]] = []  # (fc1 on meta, fc2 on meta) at the end of each constructor run

    def __init__(self, classes: int = 10, apply: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 1024)
        self.fc2 = nn.Linear(1024, classes)
        self.scale = nn.Parameter(torch.ones(4))  # a parameter made by hand: no reset_parameters
        if apply:
            self.apply(my_init)
        else:
            nn.init.normal_(self.fc2.weight, mean=0, std=0.01)
            nn.init.constant_(self.fc2.bias, 0.5)
        type(self).builds.append((self.fc1.weight.is_meta, self.fc2.weight.is_meta))


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """A 5-class pretrained net without ``scale``: fc1 loads, fc2 (shape) and scale (absent) are left over."""
    return {k: v for k, v in Net(classes=5).state_dict().items() if k != "scale"}


def _assert_constructor_init(model: Net) -> None:
    assert 0.0097 < float(model.fc2.weight.detach().std()) < 0.0103  # 10240 draws of normal(0, 0.01)
    assert float(model.fc2.weight.detach().mean()).__abs__() < 0.0005
    assert model.fc2.bias.detach().unique().tolist() == [0.5]
    assert model.scale.detach().tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("apply", [False, True], ids=["nn.init in __init__", "self.apply(my_init)"])
def test_a_built_target_keeps_its_constructors_values_and_nothing_is_written(source, apply: bool) -> None:
    model = Net(apply=apply)
    before = {k: (v.detach().clone(), v.data_ptr()) for k, v in model.named_parameters()}
    report = transfer(source, model, seed=0)
    assert report.kept == ["scale", "fc2.weight", "fc2.bias"] and report.initialized == []
    assert report.missing_keys == ["scale", "fc2.weight", "fc2.bias"]
    for key in report.kept:
        value, ptr = before[key]
        assert torch.equal(model.get_parameter(key), value) and model.get_parameter(key).data_ptr() == ptr, key
    _assert_constructor_init(model)
    assert torch.equal(model.fc1.weight, source["fc1.weight"])
    rec = report.records["fc2.weight"]
    assert (rec.status, rec.init_spec, rec.init_rule) == ("kept", "constructor", "default")
    assert rec.evidence.startswith("shape mismatch")
    assert "kept (3)" in str(report) and "constructor  fc2.{weight,bias}  (shape mismatch)" in str(report)


@pytest.mark.parametrize("apply", [False, True], ids=["nn.init in __init__", "self.apply(my_init)"])
def test_a_factory_target_gets_its_constructors_values_for_exactly_the_leftovers(source, apply: bool) -> None:
    Net.builds.clear()
    report = transfer(source, Net, target_kwargs={"apply": apply}, seed=0)
    model = report.model
    assert Net.builds == [(True, True), (True, False)], "built on meta, then replayed with only fc2 real"
    assert report.kept == ["scale", "fc2.weight", "fc2.bias"] and report.initialized == []
    assert report.records["scale"].init_spec == "constructor"
    _assert_constructor_init(model)
    assert torch.equal(model.fc1.weight, source["fc1.weight"])
    assert not any(p.is_meta for p in model.parameters())

    built = Net(apply=apply)
    transfer(source, built, seed=0)
    _assert_constructor_init(built)  # the same distribution as the built target's ...
    assert torch.equal(built.fc2.bias, model.fc2.bias) and torch.equal(built.scale, model.scale)  # ... and values


def test_a_factory_replay_is_seeded_and_leaves_the_global_rng_alone(source) -> None:
    torch.manual_seed(1)
    a = transfer(source, Net, seed=7).model
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = transfer(source, Net, seed=7).model
    torch.manual_seed(1)
    assert torch.equal(a.fc2.weight, b.fc2.weight)
    assert not torch.equal(a.fc2.weight, transfer(source, Net, seed=8).model.fc2.weight)
    torch.manual_seed(1)
    transfer(source, Net, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(3)
    c = transfer(source, Net).model  # no seed: torch.manual_seed makes it reproducible
    torch.manual_seed(3)
    assert torch.equal(c.fc2.weight, transfer(source, Net).model.fc2.weight)


class Shifty(nn.Module):
    """Registers one more parameter on every second build: a replay cannot line up with the first build."""

    runs = 0

    def __init__(self) -> None:
        super().__init__()
        type(self).runs += 1
        if type(self).runs % 2 == 0:
            self.extra = nn.Parameter(torch.zeros(1))
            del self.extra
        self.fc1 = nn.Linear(64, 1024)
        self.fc2 = nn.Linear(1024, 10)
        nn.init.constant_(self.fc2.bias, 0.5)
        self.scale = nn.Parameter(torch.ones(4))


def test_a_replay_that_does_not_line_up_builds_the_model_on_the_cpu(source, caplog) -> None:
    Shifty.runs = 0
    with caplog.at_level(logging.INFO, logger="weightsurgery.factory"):
        report = transfer(source, Shifty, seed=0)
    assert "registers its parameters differently" in caplog.text and "building it on the CPU" in caplog.text
    assert report.kept == ["scale", "fc2.weight", "fc2.bias"]
    assert report.model.fc2.bias.detach().unique().tolist() == [0.5]
    assert report.model.scale.detach().tolist() == [1.0] * 4


def test_replay_values_under_a_seed_equal_a_cpu_build_under_that_seed() -> None:
    """Where the replay builds on the CPU, the values are exactly a CPU build's under the same seed."""
    Shifty.runs = 0
    replay = build(Shifty).replay
    got = replay.values(["fc2.weight", "fc1.weight"], seed=11)
    torch.manual_seed(11)
    Shifty.runs = 2  # the next run is the third: like the first, no extra registration
    reference = Shifty()
    assert torch.equal(got["fc2.weight"], reference.fc2.weight.detach())
    assert torch.equal(got["fc1.weight"], reference.fc1.weight.detach())


def test_init_reinitializes_only_what_it_names_and_seed_alone_does_not(source) -> None:
    model = Net()
    weight, bias = model.fc2.weight.detach().clone(), model.fc2.bias.detach().clone()
    transfer(source, model, seed=0)
    assert torch.equal(model.fc2.weight, weight) and torch.equal(model.fc2.bias, bias)

    report = transfer(source, model, init={"fc2.bias": "zeros"}, seed=0)
    assert report.initialized == ["fc2.bias"] and report.kept == ["scale", "fc2.weight"]
    assert torch.equal(model.fc2.weight, weight) and not model.fc2.bias.any()

    report = transfer(source, model, init="reset", seed=0)
    assert report.initialized == ["fc2.weight", "fc2.bias"] and report.records["fc2.weight"].init_spec == "reset"
    assert report.kept == ["scale"] and report.records["scale"].init_spec.startswith("constructor (the module cannot")
    bound = 1 / 1024**0.5  # nn.Linear's own reset: kaiming_uniform(a=sqrt(5)), std = bound / sqrt(3)
    assert 0.95 * bound / 3**0.5 < float(model.fc2.weight.detach().std()) < 1.05 * bound / 3**0.5
    assert float(model.fc2.bias.detach().abs().max()) <= bound


def test_a_dry_run_predicts_kept_and_initialized(source) -> None:
    report = transfer(source, Net(), dry_run=True, init={"fc2.bias": "zeros"})
    assert report.kept == ["scale", "fc2.weight"] and report.initialized == ["fc2.bias"]
    assert report.records["fc2.weight"].init_spec == "constructor"


def test_timm_factory_leftovers_get_timms_own_init() -> None:
    src = timm.create_model("vit_tiny_patch16_224").state_dict()
    report = transfer(src, "timm:vit_tiny_patch16_224", target_kwargs={"num_classes": 10, "init_values": 1e-5},
                      exclude=["cls_token"], seed=0)
    model = report.model
    assert report.initialized == [] and report.kept[0] == "cls_token" and "head.weight" in report.kept
    gammas = [k for k in report.kept if k.endswith(".gamma")]
    assert len(gammas) == 24
    for key in gammas:  # LayerScale: init_values * torch.ones(dim), made by hand in the constructor
        assert model.get_parameter(key).detach().unique().tolist() == [pytest.approx(1e-5)], key
    assert 0.5e-6 < float(model.cls_token.detach().std()) < 2e-6  # vit init_weights: normal(std=1e-6)
    assert 0.017 < float(model.head.weight.detach().std()) < 0.021  # init_weights_vit_timm: trunc_normal(std=.02)
    assert not model.head.bias.any()
    assert torch.equal(model.blocks[3].attn.qkv.weight, src["blocks.3.attn.qkv.weight"])


def _tiny_bert_config(**kwargs):
    from transformers import BertConfig

    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, **kwargs)


def test_transformers_factory_leftovers_get_init_weights_and_reset_uses_it() -> None:
    from transformers import BertForSequenceClassification, BertModel

    cfg = _tiny_bert_config(num_labels=64)
    base = BertModel(cfg).state_dict()
    report = transfer(base, BertForSequenceClassification, target_kwargs={"config": cfg}, seed=0)
    assert report.kept == ["classifier.weight", "classifier.bias"] and report.initialized == []
    classifier = report.model.classifier
    assert 0.0185 < float(classifier.weight.detach().std()) < 0.0215  # _init_weights: normal(std=0.02), 2048 draws
    assert not classifier.bias.any()

    model = BertForSequenceClassification(cfg)
    key = "bert.encoder.layer.0.intermediate.dense.weight"
    report = transfer({k: v for k, v in base.items() if "layer.0.intermediate" not in k}, model,
                      strategies=["prefix"], init={"*.intermediate.dense.*": "reset"}, seed=0)
    assert report.records[key].init_spec == "reset (BertModel._init_weights)"
    assert 0.0185 < float(model.get_parameter(key).detach().std()) < 0.0215  # not nn.Linear's kaiming (0.10)
    assert not model.bert.encoder.layer[0].intermediate.dense.bias.any()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_b_stays_zero_so_the_logits_equal_the_base_models() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    cfg = _tiny_bert_config()
    torch.manual_seed(0)
    base = BertModel(cfg).eval()
    target = get_peft_model(BertModel(cfg), LoraConfig(target_modules=["query", "value"], r=4, lora_alpha=8)).eval()
    ids = torch.randint(0, 100, (2, 7))
    report = transfer(base.state_dict(), target)  # zero configuration: base weights into base_layer
    assert report.unused == () and len(report.kept) == 8
    assert all(".lora_" in k for k in report.kept) and report.initialized == []
    with torch.no_grad():
        assert torch.equal(target(input_ids=ids).last_hidden_state, base(input_ids=ids).last_hidden_state)
    assert all(not target.get_parameter(k).any() for k in report.kept if ".lora_B." in k)

    transfer(base.state_dict(), target, init={"*.lora_B.*": "reset"}, seed=0)  # what re-initializing did
    with torch.no_grad():
        assert not torch.allclose(target(input_ids=ids).last_hidden_state, base(input_ids=ids).last_hidden_state)
