"""Vocabulary resize for token embeddings and LM heads."""

from __future__ import annotations

import pytest
import torch

from weightsurgery.adapt import resize_rows, run_adapter
from weightsurgery.errors import AdapterError


def test_grow_copies_the_overlap_and_uses_the_mean_for_new_rows():
    torch.manual_seed(0)
    emb = torch.randn(10, 4)
    out = run_adapter("vocab", [emb], (13, 4), {})
    assert torch.equal(out[:10], emb)
    torch.testing.assert_close(out[10:], emb.mean(0).expand(3, 4))


def test_shrink_keeps_the_first_rows():
    emb = torch.randn(10, 4)
    assert torch.equal(run_adapter("vocab", [emb], (6, 4), {}), emb[:6])


def test_bias_follows_the_same_rule():
    bias = torch.tensor([1.0, 2.0, 6.0])
    assert run_adapter("vocab", [bias], (4,), {}).tolist() == [1.0, 2.0, 6.0, 3.0]


def test_covariance_sampling_is_seeded_and_close_to_the_mean():
    torch.manual_seed(0)
    emb = torch.randn(64, 8)
    a = resize_rows(emb, 70, new_rows="covariance", seed=3)
    b = resize_rows(emb, 70, new_rows="covariance", seed=3)
    c = resize_rows(emb, 70, new_rows="covariance", seed=4)
    assert torch.equal(a, b) and not torch.equal(a[64:], c[64:])
    assert len({tuple(r.tolist()) for r in a[64:]}) == 6  # distinct samples
    torch.testing.assert_close(a[64:], emb.mean(0).expand(6, 8), atol=1e-3, rtol=0)


def test_covariance_falls_back_to_the_mean_when_not_positive_definite():
    emb = torch.randn(3, 8)  # 3 rows cannot span 8 dims
    torch.testing.assert_close(resize_rows(emb, 5, new_rows="covariance")[3:], emb.mean(0).expand(2, 8))


def test_init_mode_takes_new_rows_from_fill_and_keeps_dtype():
    emb = torch.randn(4, 2, dtype=torch.float16)
    fill = torch.full((6, 2), 7.0)
    out = run_adapter("vocab", [emb], (6, 2), {"new_rows": "init"}, fill=fill)
    assert out.dtype is torch.float16
    assert torch.equal(out[:4], emb) and out[4:].eq(7).all()


def test_bad_mode_and_missing_fill_are_named():
    with pytest.raises(AdapterError, match=r"vocab: new_rows='random'; valid values are mean, covariance, init"):
        resize_rows(torch.zeros(2, 2), 3, new_rows="random")  # type: ignore[arg-type]
    with pytest.raises(AdapterError, match=r"needs fill="):
        run_adapter("vocab", [torch.zeros(2, 2)], (3, 2), {"new_rows": "init"})
    with pytest.raises(AdapterError, match=r"vocab: source \(2, 2\) and target \(3, 4\) must differ only in dim 0"):
        run_adapter("vocab", [torch.zeros(2, 2)], (3, 4), {})
