"""``transformers:CLASS`` targets: built on meta from the source's config.json (or config=), filled in place."""

from __future__ import annotations

import pytest
import torch

from weightsurgery import transfer
from weightsurgery.errors import TargetError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # transformers imports in seconds


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder)
    return model, folder


def test_the_source_config_builds_the_target_on_meta_and_it_is_filled(llama) -> None:
    model, folder = llama
    report = transfer(folder, "transformers:AutoModelForCausalLM", strict=True)
    built = report.model.eval()
    assert type(built).__name__ == "LlamaForCausalLM"
    assert not any(t.is_meta for t in [*built.parameters(), *built.buffers()])
    for k, v in model.state_dict().items():
        assert torch.equal(built.state_dict()[k], v), k
    assert torch.equal(built.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.equal(built(ids).logits, model(ids).logits)


def test_config_can_be_named_and_is_required(llama) -> None:
    model, folder = llama
    report = transfer(folder / "model.safetensors", "transformers:LlamaForCausalLM",
                      target_kwargs={"config": str(folder)})
    assert torch.equal(report.model.lm_head.weight, model.lm_head.weight)
    with pytest.raises(TargetError, match=r"needs a config: pass target_kwargs=\{'config'"):
        transfer(model.state_dict(), "transformers:LlamaForCausalLM")
    with pytest.raises(TargetError, match="transformers has no model class 'LlamaForCausalLMX'"):
        transfer(folder, "transformers:LlamaForCausalLMX")
