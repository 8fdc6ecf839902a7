"""Names as evidence: token-level similarity that knows the field's abbreviations.

Libraries name the same thing differently: ``q`` and ``query``, ``attn`` and
``attention``, ``ln``, ``norm`` and ``LayerNorm``. This module splits a name
into tokens (on dots, underscores, camelCase and digit runs), maps each token
to a *concept* through a small synonym table, and compares names by their
concepts. The matchers use it only to break ties between candidates of equal
shape; a name similarity never matches two tensors on its own.

Digits are kept apart from words: ``bn1`` and ``bn2`` share the concept
``norm``, and their numbers are compared separately
(:func:`index_agreement`) because libraries number from 0 or from 1 at will.
A single letter that names no known concept (``f.a``, ``s1.b1``) is a
position label, not a meaning, and is left out: otherwise torchvision's
``f.b`` and timm's ``b1`` would "share" the word ``b``.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

__all__ = [
    "alpha_stem",
    "concepts",
    "index_agreement",
    "known_roles",
    "leaf_role",
    "name_similarity",
    "numeric_components",
    "split_tokens",
]

_SPLIT = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

# Adjacent tokens that name one thing (``layer_norm``, ``LayerNorm``, ``feed_forward``).
_COMPOUNDS: dict[tuple[str, str], str] = {
    ("layer", "norm"): "norm",
    ("batch", "norm"): "norm",
    ("group", "norm"): "norm",
    ("rms", "norm"): "norm",
    ("instance", "norm"): "norm",
    ("feed", "forward"): "mlp",
    ("squeeze", "excite"): "squeeze_excite",
    ("squeeze", "excitation"): "squeeze_excite",
    ("running", "mean"): "mean",
    ("moving", "mean"): "mean",
    ("running", "var"): "var",
    ("moving", "var"): "var",
    ("moving", "variance"): "var",
    ("num", "batches"): "counter",
    ("batches", "tracked"): "counter",
}

# One row per concept: every spelling the field uses for it.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "query": ("q", "query", "queries"),
    "key": ("k", "key", "keys"),
    "value": ("v", "value", "values"),
    "attention": ("attn", "attention", "att", "attentions"),
    "linear": ("proj", "projection", "project", "dense", "fc", "linear", "lin"),
    "norm": ("ln", "norm", "layernorm", "bn", "batchnorm", "gn", "groupnorm", "rmsnorm", "normalization"),
    "embedding": ("emb", "embed", "embeds", "embedding", "embeddings", "embedder"),
    "position": ("pos", "position", "positional", "positions"),
    "conv": ("conv", "convolution", "cv"),
    "depthwise": ("dw", "depthwise"),
    "pointwise": ("pw", "pointwise", "pwl"),
    "squeeze_excite": ("se", "squeeze", "excite", "excitation"),
    "mlp": ("mlp", "ffn", "ff"),
    "block": ("block", "blocks", "blk", "layer", "layers", "stage", "stages"),
    "head": ("head", "classifier", "logits"),
    "downsample": ("downsample", "shortcut"),
    "weight": ("weight", "gamma", "kernel", "scale", "w"),
    "bias": ("bias", "beta"),
    "mean": ("mean",),
    "var": ("var", "variance"),
    "expand": ("expand", "expansion", "exp"),
    "token": ("tok", "token", "tokens"),
    "output": ("out", "output"),
    "input": ("in", "input"),
}
_CONCEPT: dict[str, str] = {spelling: concept for concept, row in _SYNONYMS.items() for spelling in row}

# Tokens that carry no meaning about a tensor's role.
_FILLER = frozenset({"self", "module", "model", "net", "the", "of"})

# The leaf names of one role, across libraries (torch, TF/Keras, JAX, Caffe2).
_LEAF_ROLES: dict[str, str] = {
    "weight": "weight",
    "gamma": "weight",
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "beta": "bias",
    "running_mean": "running_mean",
    "moving_mean": "running_mean",
    "mean": "running_mean",
    "running_var": "running_var",
    "moving_var": "running_var",
    "moving_variance": "running_var",
    "var": "running_var",
    "num_batches_tracked": "num_batches_tracked",
}


@lru_cache(maxsize=65536)
def split_tokens(name: str) -> tuple[str, ...]:
    """Split a dotted name into lowercase tokens on dots, underscores, camelCase and digits.

    Args:
        name: a key, module path or leaf name.

    Returns:
        The tokens, in order.

    Example:
        >>> split_tokens("encoder.layer.0.attention.selfAttn.LayerNorm_1")
        ('encoder', 'layer', '0', 'attention', 'self', 'attn', 'layer', 'norm', '1')
        >>> split_tokens("_blocks.7._bn0")
        ('blocks', '7', 'bn', '0')
    """
    return tuple(t.lower() for t in _SPLIT.findall(name))


@lru_cache(maxsize=65536)
def concepts(name: str) -> tuple[str, ...]:
    """The word concepts of ``name``, digits and filler words left out.

    Args:
        name: a key, module path or leaf name.

    Returns:
        One concept per meaningful word (a known synonym maps to its row's
        concept; an unknown word, singularised, stands for itself).

    Example:
        >>> concepts("attention.self.query")
        ('attention', 'query')
        >>> concepts("attn.q") == concepts("attention.self.query")
        True
        >>> concepts("LayerNorm") == concepts("ln")
        True
        >>> concepts("s1.b1.conv1"), concepts("f.b.1")
        (('conv',), ())
    """
    words = [t for t in split_tokens(name) if not t.isdigit() and t not in _FILLER]
    out: list[str] = []
    i = 0
    while i < len(words):
        compound = _COMPOUNDS.get((words[i], words[i + 1])) if i + 1 < len(words) else None
        if compound is not None:
            out.append(compound)
            i += 2
            continue
        word = words[i]
        i += 1
        if word not in _CONCEPT and len(word) == 1:
            continue  # an unknown letter (``f.a``, ``s1.b1``) is a position, not a meaning
        if word not in _CONCEPT and len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(_CONCEPT.get(word, word))
    return tuple(out)


def name_similarity(a: str, b: str) -> float:
    """How alike two names are in meaning, from 0 (nothing shared) to 1 (same concepts).

    The Dice coefficient over the two multisets of :func:`concepts`. Digits do
    not count; compare them with :func:`index_agreement`.

    Args:
        a: a name.
        b: another name.

    Returns:
        A float in ``[0, 1]``; 0 when either name has no words.

    Example:
        >>> name_similarity("attn.q", "attention.self.query")
        1.0
        >>> name_similarity("bn1", "_bn2")
        1.0
        >>> name_similarity("q", "key")
        0.0
    """
    ca, cb = _concept_counts(a), _concept_counts(b)
    total = len(concepts(a)) + len(concepts(b))
    if total == 0:
        return 0.0
    if len(ca) > len(cb):
        ca, cb = cb, ca
    shared = sum(min(n, cb.get(c, 0)) for c, n in ca.items())
    return 2.0 * shared / total


@lru_cache(maxsize=65536)
def _concept_counts(name: str) -> Counter[str]:
    return Counter(concepts(name))


@lru_cache(maxsize=65536)
def numeric_components(key: str) -> tuple[int, ...]:
    """The purely numeric components of a dotted key (container indices).

    Example:
        >>> numeric_components("blocks.2.1.conv_dw.weight")
        (2, 1)
        >>> numeric_components("layer1.conv1.weight")
        ()
    """
    return tuple(int(c) for c in key.split(".") if c.isdigit())


def index_agreement(a: str, b: str) -> float:
    """How well the container indices of two paths agree: 1, 0.5 or 0.

    1 when the numeric components are equal (``layers.3`` and ``blocks.3``),
    0.5 when only the last ones are, else 0 (``_blocks.7`` and ``blocks.2.1``).

    Example:
        >>> index_agreement("encoder.layer.3.fc", "blocks.3.mlp")
        1.0
        >>> index_agreement("_blocks.7", "blocks.2.1")
        0.0
    """
    na, nb = numeric_components(a), numeric_components(b)
    if na == nb:
        return 1.0
    if na and nb and na[-1] == nb[-1]:
        return 0.5
    return 0.0


def alpha_stem(name: str) -> str:
    """``name`` with its digit runs removed: names that differ only in numbering share a stem.

    Siblings sharing a stem (``bn0``, ``bn1``; ``conv1``, ``conv2``; ``0``,
    ``1``) are ordered by their numbers even where the file order is not
    the module order.

    Example:
        >>> alpha_stem("_blocks.3._bn1") == alpha_stem("_blocks.4._bn0")
        True
        >>> alpha_stem("query") == alpha_stem("key")
        False
    """
    return re.sub(r"\d+", "#", name)


def known_roles() -> frozenset[str]:
    """The roles :func:`leaf_role` knows names for (``weight``, ``bias``, ``running_mean``...).

    Example:
        >>> sorted(known_roles())[:2]
        ['bias', 'num_batches_tracked']
    """
    return frozenset(_LEAF_ROLES.values())


def leaf_role(leaf: str) -> str:
    """The role a tensor's own name stands for across libraries.

    ``gamma``, ``kernel`` and ``scale`` are a ``weight``; ``beta`` a ``bias``;
    ``moving_mean`` a ``running_mean``. An unknown name is its own role.

    Example:
        >>> leaf_role("gamma"), leaf_role("moving_variance"), leaf_role("cls_token")
        ('weight', 'running_var', 'cls_token')
    """
    return _LEAF_ROLES.get(leaf, _LEAF_ROLES.get(leaf.lower(), leaf))
