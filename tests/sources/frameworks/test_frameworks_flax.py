"""Flax files made by Flax (msgpack via flax.serialization, big_vision-style .npz), proven by their outputs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightsurgery import transfer
from weightsurgery.sources import resolve

pytestmark = pytest.mark.slow  # importing JAX and Flax, and compiling each model's apply, takes a while


@pytest.fixture(scope="session")
def flax_files(framework_dir: Path) -> dict[str, Any]:
    """Flax models, their variables, and the files Flax wrote for them."""
    import flax
    import jax
    import jax.numpy as jnp
    from flax import linen as fnn
    from flax import serialization

    class MLP(fnn.Module):
        @fnn.compact
        def __call__(self, x: Any) -> Any:
            x = fnn.LayerNorm()(fnn.relu(fnn.Dense(8)(x)))
            x = fnn.Dense(8)(x)  # square (8 -> 8)
            return fnn.Dense(3)(x)

    class ViTBlock(fnn.Module):
        @fnn.compact
        def __call__(self, x: Any) -> Any:
            y = fnn.LayerNorm()(x)
            x = x + fnn.MultiHeadDotProductAttention(num_heads=2)(y, y)
            y = fnn.gelu(fnn.Dense(16)(fnn.LayerNorm()(x)))
            return x + fnn.Dense(8)(y)

    class ConvNet(fnn.Module):
        @fnn.compact
        def __call__(self, x: Any) -> Any:
            x = fnn.BatchNorm(use_running_average=True)(fnn.Conv(4, (3, 3))(x))
            return fnn.ConvTranspose(4, (2, 2), strides=(2, 2))(fnn.relu(x))  # 4 -> 4: square

    class Custom(fnn.Module):
        @fnn.compact
        def __call__(self, x: Any) -> Any:
            return x @ self.param("w", fnn.initializers.lecun_normal(), (8, 8))  # a square weight of its own

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"flax": flax}
    for name, model, shape in (("mlp", MLP(), (2, 4)), ("vit", ViTBlock(), (2, 5, 8)), ("conv", ConvNet(), (1, 6, 6, 3)),
                               ("custom", Custom(), (2, 8))):
        variables = _perturb(model.init(jax.random.PRNGKey(0), jnp.ones(shape)), rng, jnp)
        if "batch_stats" in variables:
            stats = variables["batch_stats"]["BatchNorm_0"]
            variables["batch_stats"]["BatchNorm_0"] = {"mean": stats["mean"], "var": jnp.abs(stats["var"]) + 0.5}
        path = framework_dir / f"{name}.msgpack"
        path.write_bytes(serialization.to_bytes(variables))
        out[name] = (model, variables, path)
    flat = flax.traverse_util.flatten_dict(out["vit"][1]["params"], sep="/")
    np.savez(framework_dir / "vit.npz", **{k: np.asarray(v) for k, v in flat.items()})  # big_vision's layout
    out["vit_npz"] = framework_dir / "vit.npz"
    return out


def _perturb(tree: Any, rng: np.random.Generator, jnp: Any) -> Any:
    """Biases and statistics away from their init, in the tree's own order (jax's tree_map would sort it)."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _perturb(v, rng, jnp) for k, v in tree.items()}
    return jnp.asarray(np.asarray(tree) + rng.normal(0, 0.1, tree.shape).astype(np.float32))


def _flax_out(files: dict[str, Any], name: str, x: np.ndarray) -> np.ndarray:
    model, variables, _ = files[name]
    return np.asarray(model.apply(variables, x))


def test_flax_mlp(flax_files: dict[str, Any]) -> None:
    target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8, eps=1e-6), nn.Linear(8, 8), nn.Linear(8, 3))
    report = transfer(flax_files["mlp"][2], target)
    assert len(report.mapping) == 8
    assert "source layout dense" in report.records["3.weight"].evidence
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    with torch.no_grad():
        got = target(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _flax_out(flax_files, "mlp", x), rtol=1e-4, atol=1e-5)


class TorchViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(8, eps=1e-6)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(8, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))  # Flax's gelu is the tanh one


@pytest.mark.parametrize("kind", ["msgpack", "npz"])
def test_flax_vit_block_attention_fused_into_in_proj(flax_files: dict[str, Any], kind: str) -> None:
    path = flax_files["vit"][2] if kind == "msgpack" else flax_files["vit_npz"]
    with resolve(path) as ckpt:
        assert ckpt.metas["MultiHeadDotProductAttention_0.query.weight"].shape == (8, 8)  # (D, heads, hd) -> (h*hd, D)
        assert ckpt.metadata["layouts"]["MultiHeadDotProductAttention_0.out.weight"]["layout"] == "heads_out"
    target = TorchViTBlock()
    report = transfer(path, target)
    assert len(report.mapping) == len(target.state_dict())
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    with torch.no_grad():
        got = target(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _flax_out(flax_files, "vit", x), rtol=1e-4, atol=1e-5)


def test_flax_conv_batchnorm_and_square_conv_transpose(flax_files: dict[str, Any]) -> None:
    target = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2, 2))
    report = transfer(flax_files["conv"][2], target.eval())
    assert len(report.mapping) == len(target.state_dict()) - 1  # num_batches_tracked: not in Flax
    assert "not spatially flipped" in report.records["3.weight"].evidence
    x = np.random.default_rng(3).normal(size=(1, 6, 6, 3)).astype(np.float32)
    with torch.no_grad():
        got = target(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, _flax_out(flax_files, "conv", x), rtol=1e-4, atol=1e-5)


def test_flax_square_weight_of_unknown_layout_is_refused(flax_files: dict[str, Any]) -> None:
    target = nn.Module()
    target.proj = nn.Linear(8, 8, bias=False)
    before = target.proj.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = transfer(flax_files["custom"][2], target, key_map={"proj.weight": "w"})
    assert report.mapping == {}
    reason = report.records["proj.weight"].evidence
    assert "layout undecided" in reason and "'w' is not a name Flax's own layers use" in reason
    assert torch.equal(target.proj.weight, before)
