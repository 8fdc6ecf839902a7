"""Classifier head subset / reorder / grow."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weightsurgery.adapt import head_rows, run_adapter, select_rows
from weightsurgery.errors import AdapterError

LABELS = ["cat", "dog", "fox", "owl", "eel"]


def _subset_head(head: nn.Linear, rows: list[int], fill: nn.Linear | None = None) -> nn.Linear:
    new = nn.Linear(head.in_features, len(rows))
    with torch.no_grad():
        for name in ("weight", "bias"):
            target = getattr(new, name)
            filler = getattr(fill, name) if fill is not None else None
            target.copy_(run_adapter("head", [getattr(head, name)], tuple(target.shape), {"rows": rows}, fill=filler))
    return new


def test_subset_head_gives_exactly_the_source_logits_for_those_classes():
    torch.manual_seed(0)
    head = nn.Linear(16, 5)
    rows = head_rows(["owl", 0, "fox"], num_source=5, num_target=3, label_names=LABELS)
    assert rows == [3, 0, 2]
    sub = _subset_head(head, rows)
    x = torch.randn(7, 16)
    torch.testing.assert_close(sub(x), head(x)[:, rows])  # same numbers; GEMM blocking may differ in the last ulp


def test_grow_keeps_copied_rows_and_takes_new_rows_from_fill():
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    fill = nn.Linear(4, 5)
    rows = head_rows([2, 1], num_source=3, num_target=5)
    assert rows == [2, 1, -1, -1, -1]
    grown = _subset_head(head, rows, fill)
    assert torch.equal(grown.weight[:2], head.weight[[2, 1]])
    assert torch.equal(grown.bias[:2], head.bias[[2, 1]])
    assert torch.equal(grown.weight[2:], fill.weight[2:])
    assert torch.equal(grown.bias[2:], fill.bias[2:])


def test_head_keeps_the_source_dtype():
    head = torch.randn(4, 3, dtype=torch.bfloat16)
    out = run_adapter("head", [head], (2, 3), {"rows": [3, 1]})
    assert out.dtype is torch.bfloat16 and torch.equal(out, head[[3, 1]])


@pytest.mark.parametrize(
    ("classes", "labels", "message"),
    [
        (["catt"], LABELS, r"classes= names label 'catt', which is not a source label; closest: 'cat'"),
        (["cat"], None, r"classes= names label 'cat' but the source has no label names; pass source_labels="),
        ([7], LABELS, r"classes= holds index 7, out of range for a source head of 5 classes"),
        ([0, 1, 2, 3], LABELS, r"classes= lists 4 classes but the target head has 3"),
        ([1.5], LABELS, r"classes= entries must be int indices or str label names, got 1.5"),
    ],
)
def test_bad_classes_name_the_problem(classes, labels, message):
    with pytest.raises(AdapterError, match=message):
        head_rows(classes, num_source=5, num_target=3, label_names=labels)


def test_select_rows_refuses_out_of_range_rows():
    with pytest.raises(AdapterError, match=r"class index\(es\) \[5\] out of range for a source head of 5 classes"):
        select_rows(torch.zeros(5, 2), [0, 5])


def test_head_adapter_checks_rows_against_the_target_shape():
    with pytest.raises(AdapterError, match=r"head: 2 rows of \(3,\) do not make the target shape \(3, 3\)"):
        run_adapter("head", [torch.zeros(4, 3)], (3, 3), {"rows": [0, 1]})


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_select_rows_is_indexing(data):
    n = data.draw(st.integers(1, 8))
    rows = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=10))
    tensor = torch.randn(n, 3)
    assert torch.equal(select_rows(tensor, rows), tensor[rows])
