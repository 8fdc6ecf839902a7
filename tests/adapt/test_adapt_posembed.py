"""ViT position-embedding grid resampling, prefix tokens kept."""

from __future__ import annotations

import pytest
import timm
import torch

from weightsurgery.adapt import infer_grids, resample_pos_embed, run_adapter
from weightsurgery.errors import AdapterError


def test_vit_224_weights_into_a_384_model():
    torch.manual_seed(0)
    small = timm.create_model("vit_tiny_patch16_224")
    with torch.device("meta"):
        large = timm.create_model("vit_tiny_patch16_384")
    src, dst = small.state_dict(), large.state_dict()
    grids = infer_grids(src["pos_embed"].shape[1], dst["pos_embed"].shape[1])
    assert grids == (1, (14, 14), (24, 24))
    prefix, old, new = grids
    args = {"num_prefix_tokens": prefix, "old_grid": list(old), "new_grid": list(new)}
    loaded = {
        k: run_adapter("pos_embed", [v], tuple(dst[k].shape), args) if v.shape != dst[k].shape else v
        for k, v in src.items()
    }
    large.load_state_dict(loaded, assign=True)  # strict: every key present with the 384 model's shape
    assert large.pos_embed.shape == (1, 1 + 24 * 24, 192)
    assert torch.equal(large.pos_embed[:, :1], small.pos_embed[:, :1])  # class token position kept
    # everything but the position embedding is the 224 model's
    assert all(torch.equal(large.state_dict()[k], v) for k, v in src.items() if k != "pos_embed")


def test_same_grid_is_the_identity():
    pe = torch.randn(1, 1 + 14 * 14, 8)
    assert torch.equal(run_adapter("pos_embed", [pe], tuple(pe.shape), {"new_grid": [14, 14]}), pe)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_prefix_tokens_are_kept_and_a_constant_grid_stays_constant(prefix):
    pe = torch.cat([torch.randn(1, prefix, 4), torch.full((1, 9, 4), 0.25)], dim=1)
    out = resample_pos_embed(pe, new_grid=(5, 5), num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + 25, 4)
    assert torch.equal(out[:, :prefix], pe[:, :prefix])
    torch.testing.assert_close(out[:, prefix:], torch.full((1, 25, 4), 0.25))


def test_non_square_grid_resamples_each_axis():
    # value = row index on a 2 x 3 grid; nearest upsampling to 4 x 6 repeats each row twice
    rows = torch.arange(2.0).repeat_interleave(3).reshape(1, 6, 1)
    pe = torch.cat([torch.tensor([[[9.0]]]), rows], dim=1)
    out = run_adapter(
        "pos_embed",
        [pe],
        (1, 25, 1),
        {"num_prefix_tokens": 1, "old_grid": [2, 3], "new_grid": [4, 6], "interpolation": "nearest"},
    )
    assert out[0, 0, 0].item() == 9.0
    assert out[0, 1:, 0].reshape(4, 6)[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_embedding_layout_and_half_precision():
    pe = torch.randn(1 + 7 * 7, 16, dtype=torch.float16)  # CLIP-style nn.Embedding (N, D)
    out = resample_pos_embed(pe, new_grid=(14, 14))
    assert out.shape == (1 + 14 * 14, 16) and out.dtype is torch.float16
    assert torch.equal(out[0], pe[0])


def test_infer_grids_refuses_what_it_cannot_tell():
    assert infer_grids(197, 577) == (1, (14, 14), (24, 24))
    assert infer_grids(201, 581) == (5, (14, 14), (24, 24))  # class + 4 register tokens
    assert infer_grids(196, 200).startswith("no prefix-token count 0..16 makes both 196 and 200")


def test_bad_arguments_name_the_fix():
    with pytest.raises(
        AdapterError, match=r"pos_embed: 11 tokens are not 1 prefix token\(s\) \+ a 3x3 grid; set num_prefix_tokens"
    ):
        resample_pos_embed(torch.zeros(1, 11, 2), new_grid=(4, 4), old_grid=(3, 3))
    with pytest.raises(AdapterError, match=r"interpolation='cubic'; valid modes are bicubic, bilinear, nearest, area"):
        resample_pos_embed(torch.zeros(1, 10, 2), new_grid=(4, 4), interpolation="cubic")  # type: ignore[arg-type]
