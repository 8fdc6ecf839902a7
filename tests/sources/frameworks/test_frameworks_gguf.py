"""GGUF files written by the gguf package's writer the way llama.cpp's converter writes them, into transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from weightsurgery import transfer
from weightsurgery.sources import resolve

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

HEADS, KV_HEADS = 4, 2


def _config() -> Any:
    return transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
                                    max_position_embeddings=64, tie_word_embeddings=False)


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: Hugging Face's rotate-half rows -> interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(model: Any, path: Path, qtype: Any) -> Path:
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
    for hf_name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _llama_cpp_permute(data, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _llama_cpp_permute(data, cfg.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        if qtype is not None and data.ndim == 2 and data.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def llama_gguf(framework_dir: Path) -> tuple[Any, dict[str, Path]]:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_config()).eval()
    files = {"f32": _write_gguf(model, framework_dir / "tiny-f32.gguf", None),
             "q8_0": _write_gguf(model, framework_dir / "tiny-q8_0.gguf", gguf.GGMLQuantizationType.Q8_0)}
    return model, files


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind, tol", [("f32", 1e-5), ("q8_0", 0.05)])
def test_gguf_llama_into_transformers(llama_gguf: tuple[Any, dict[str, Path]], kind: str, tol: float) -> None:
    source, files = llama_gguf
    torch.manual_seed(1)
    target = transformers.LlamaForCausalLM(_config()).eval()
    report = transfer(files[kind], target)
    assert len(report.mapping) == len(source.state_dict())
    q = report.records["model.layers.1.self_attn.q_proj.weight"]
    assert q.strategy == "aliases" and q.adapter == "rope" and q.adapter_args == {"heads": HEADS}
    assert report.records["model.layers.0.self_attn.k_proj.weight"].adapter_args == {"heads": KV_HEADS}
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    expected, got = _logits(source, ids), _logits(target, ids)
    assert (got - expected).abs().max() < tol * expected.abs().max()


def test_gguf_checkpoint_metadata_and_dequantization(llama_gguf: tuple[Any, dict[str, Path]]) -> None:
    source, files = llama_gguf
    with resolve(files["q8_0"]) as ckpt:
        assert ckpt.metadata["gguf"]["general.architecture"] == "llama"
        assert ckpt.metadata["gguf"]["llama.attention.head_count_kv"] == KV_HEADS
        assert "model.layers.0.mlp.gate_proj.weight" in ckpt.metadata["name_candidates"]["blk.0.ffn_gate.weight"]
        assert "blk.0.attn_q.weight" in ckpt.metadata["undecided"]  # its rotary order depends on the target
        gate = ckpt.load("blk.0.ffn_gate.weight")  # Q8_0, dequantized by the gguf package
        truth = source.state_dict()["model.layers.0.mlp.gate_proj.weight"]
        assert gate.shape == truth.shape and gate.dtype == torch.float32
        scale = truth.abs().reshape(-1, 32).amax(1, keepdim=True) / 127  # one Q8_0 block: 32 values and a scale
        assert ((gate - truth).abs().reshape(-1, 32) <= scale * 0.51 + 1e-3).all()


def test_gguf_qk_into_an_unknown_convention_are_refused(llama_gguf: tuple[Any, dict[str, Path]]) -> None:
    """A target whose names say nothing of its rotary convention: q and k are never copied."""
    from torch import nn

    _, files = llama_gguf
    target = nn.Module()
    target.q = nn.Linear(32, 32, bias=False)
    before = target.q.weight.detach().clone()
    with pytest.warns(UserWarning):
        report = transfer(files["f32"], target, key_map={"q.weight": "blk.0.attn_q.weight"})
    assert report.mapping == {}
    assert "rotary" in report.records["q.weight"].evidence and "layout undecided" in report.records["q.weight"].evidence
    assert torch.equal(target.q.weight, before)
