"""Device targets (issue 12, item 6): staged values and undo copies stay on the host; commit streams to the device.

Two halves:

* **Here, on any machine.** Staging for a target on CUDA is run on a CPU-only
  machine: the target's tensors are :class:`~torch._subclasses.fake_tensor.FakeTensor`\\ s
  on ``cuda`` (torch's own metadata-only tensors; staging reads nothing but
  their dtype and device). Every staged value must be an ordinary CPU tensor,
  equal bit for bit to what a CPU target gets, and CUDA is never touched:
  code that put a staged value on the target's device raises here.
* **On a CUDA machine** (skipped without one): a transfer into a model on the
  GPU, checked for peak device memory (the model plus its largest tensor, not
  a second copy of the model), for equality with the same transfer on the CPU,
  and for a rollback that restores the GPU model bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from cuda_memory import SLACK, peak_during
from faults import InjectedFault, Steps
from model_state import assert_unchanged, snapshot
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from weightsurgery import AdaptRule, transfer
from weightsurgery._device import IN_FLIGHT, HostToDevice, host_copy, staging_value
from weightsurgery.apply.commit import current_tensors
from weightsurgery.apply.stage import fill_keys, stage
from weightsurgery.init import InitRules, compute_init
from weightsurgery.match.plan import Action
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources import resolve

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")


class Net(nn.Module):
    """Loads, a cast, a grown vocabulary (an adapter), a leftover head and a non-contiguous parameter."""

    def __init__(self, vocab: int = 2048, classes: int = 12, width: int = 256, blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(*[nn.Linear(width, width) for _ in range(blocks)])
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(2 * width, width).t())  # a transposed view: copy_ needs a temporary
        self.head = nn.Linear(width, classes)


def source_file(folder: Path, width: int = 256, blocks: int = 3) -> Path:
    """A float16 checkpoint of a smaller vocabulary and another head, values unlike any target's."""
    torch.manual_seed(1)
    model = Net(vocab=2000, classes=10, width=width, blocks=blocks)
    state = {k: (v.detach() * 3).to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path = folder / "w.safetensors"
    safetensors.torch.save_file(state, path)
    return path


OPTIONS = dict(on_mismatch="adapt", init={"head.*": "trunc_normal(std=0.02)"}, seed=0, quiet=True,
               adapt=[AdaptRule("embed.weight", "vocab", {"new_rows": "init"})])


def target(**kwargs) -> Net:
    torch.manual_seed(0)
    return Net(**kwargs)


# ---------------------------------------------------------------- here: staging for a CUDA target


def on_fake_cuda(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors as metadata-only tensors on ``cuda``, as ``current`` for staging."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        return {k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cuda")
                for k, v in model.state_dict().items()}


def test_staging_for_a_cuda_target_stays_on_the_host_and_never_touches_cuda(tmp_path) -> None:
    model = target()
    path = source_file(tmp_path)
    plan = transfer(path, model, dry_run=True, **OPTIONS).plan
    checkpoint, spec = resolve(path), TargetSpec.from_module(model)
    copies = [e for e in plan.entries.values() if e.action in (Action.LOAD, Action.ADAPT)]
    assert {e.action for e in copies} == {Action.LOAD, Action.ADAPT}
    fills = fill_keys(copies)
    assert fills == ["embed.weight"]  # the grown rows come from the fallback init
    init = compute_init(model, spec, fills, InitRules.from_user(None), seed=0, materialize=fills)

    cuda = on_fake_cuda(model)
    assert all(t.device.type == "cuda" for t in cuda.values())
    staged = stage(copies, checkpoint, spec, cuda, init.tensors)
    on_cpu = stage(copies, checkpoint, spec, current_tensors(model, spec), init.tensors)

    assert staged.tensors.keys() == on_cpu.tensors.keys() == {e.target for e in copies}
    for key, value in staged.tensors.items():
        assert type(value) is torch.Tensor and value.device == torch.device("cpu"), key
        assert value.dtype == model.state_dict()[key].dtype, key
        assert torch.equal(value, on_cpu.tensors[key]), key
    assert staged.casts == on_cpu.casts and staged.casts["blocks.0.weight"] == ("float16", "float32")
    assert not torch.cuda.is_initialized()


def test_the_fallback_init_for_a_cuda_target_stays_on_the_host() -> None:
    model = target()
    spec = TargetSpec.from_module(model)
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cuda"):
        fake = target()  # the same model, built with its tensors on cuda (metadata only)
    assert all(t.device.type == "cuda" for t in fake.state_dict().values())
    keys = ["head.weight", "head.bias", "norm.weight"]
    rules = InitRules.from_user({"head.*": "trunc_normal(std=0.02)", "norm.*": "reset"})
    got = compute_init(fake, spec, keys, rules, seed=0)
    want = compute_init(model, spec, keys, rules, seed=0)
    assert got.tensors.keys() == want.tensors.keys() == set(keys)
    for key, value in got.tensors.items():
        assert type(value) is torch.Tensor and value.device == torch.device("cpu"), key
        assert torch.equal(value, want.tensors[key]), key
    assert not torch.cuda.is_initialized()


def test_staging_value_casts_on_the_host_and_copies_nothing_it_need_not() -> None:
    half = torch.arange(6, dtype=torch.float16)
    same = staging_value(half, torch.float16, torch.device("cuda"))
    assert same is half  # already on the host with the right dtype: no copy
    cast = staging_value(half, torch.float32, torch.device("cuda", 1))
    assert cast.device == torch.device("cpu") and cast.dtype == torch.float32 and torch.equal(cast, half.float())
    assert staging_value(half, torch.float32, torch.device("meta")).device == torch.device("cpu")
    assert not torch.cuda.is_initialized()


def test_host_copy_and_the_stream_on_the_cpu_copy_and_write_in_place() -> None:
    w = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    backup = host_copy(w)
    assert torch.equal(backup, w) and backup.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    with torch.inference_mode():
        frozen = torch.zeros(4, 3)
    stream = HostToDevice()
    ptr = w.data_ptr()
    stream.copy(w, torch.ones(4, 3))
    stream.copy(frozen, torch.full((4, 3), 2.0))  # an inference tensor, written inside inference mode
    stream.finish()
    assert w.data_ptr() == ptr and torch.equal(w, torch.ones(4, 3)) and torch.equal(frozen, torch.full((4, 3), 2.0))
    assert not torch.cuda.is_initialized()


# ---------------------------------------------------------------- on a CUDA machine


def tensor_bytes(model: nn.Module) -> tuple[int, int]:
    """(the bytes of all the model's tensors, the bytes of its largest)."""
    sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
    return sum(sizes), max(sizes)


def gpu_target(**kwargs) -> Net:
    model = target(**kwargs).cuda()
    assert not model.proj.is_contiguous()  # .cuda() keeps the transposed strides
    torch.cuda.synchronize()
    return model


WIDE = dict(width=1024, blocks=4)  # ~40 MiB: a second copy on the device stands out from the slack


@needs_cuda
def test_a_transfer_into_a_gpu_model_holds_at_most_one_tensor_more_and_matches_the_cpu(tmp_path) -> None:
    path = source_file(tmp_path, **WIDE)
    on_cpu = target(**WIDE)
    transfer(path, on_cpu, **OPTIONS)
    model = gpu_target(**WIDE)
    total, largest = tensor_bytes(model)
    assert torch.cuda.memory_allocated() >= total

    peak = peak_during(lambda: transfer(path, model, **OPTIONS))

    assert peak <= largest + SLACK, f"{peak} bytes above the model; its largest tensor has {largest} (all: {total})"
    want, got = on_cpu.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    for key, value in got.items():
        assert value.device.type == "cuda", key
        assert torch.equal(value.cpu(), want[key]), f"{key}: differs from the same transfer on the CPU"
    assert model.proj.stride() == on_cpu.proj.stride()  # written in place


@needs_cuda
def test_a_source_already_on_the_gpu_is_copied_without_a_staged_copy() -> None:
    model = gpu_target(**WIDE)
    torch.manual_seed(2)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}  # on the device, same dtypes
    _, largest = tensor_bytes(model)
    peak = peak_during(lambda: transfer(state, model, quiet=True))
    assert peak <= largest + SLACK
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@needs_cuda
@pytest.mark.parametrize("fault", ["error", "interrupt"])
def test_a_fault_after_the_last_write_restores_the_gpu_model_bit_for_bit(tmp_path, fault: str) -> None:
    path = source_file(tmp_path, **WIDE)
    with Steps().installed() as clean:
        transfer(path, gpu_target(**WIDE), **OPTIONS)
    last_write = max(i for i, (kind, _) in enumerate(clean.log) if kind == "write")
    assert sum(kind == "write" for kind, _ in clean.log) == len(target(**WIDE).state_dict())

    model = gpu_target(**WIDE)
    before = snapshot(model)
    _, largest = tensor_bytes(model)

    def failing() -> None:
        with Steps(last_write, fault=fault, when="after").installed(), \
                pytest.raises((InjectedFault, KeyboardInterrupt)):
            transfer(path, model, **OPTIONS)

    peak = peak_during(failing)
    assert peak <= largest + SLACK, "the undo copies are on the device"
    assert_unchanged(before, model)


@needs_cuda
def test_the_stream_writes_many_tensors_through_its_few_pinned_buffers() -> None:
    torch.manual_seed(3)
    dsts = [torch.zeros(n, n + 1, device="cuda") for n in range(1, 40)]
    dsts.append(torch.zeros(64, 32, device="cuda").t())  # non-contiguous
    with torch.inference_mode():
        dsts.append(torch.zeros(5, device="cuda"))
    values = [torch.randn(d.shape) for d in dsts]
    expected = [v.clone() for v in values]
    stream = HostToDevice()
    for dst, value in zip(dsts, values):
        stream.copy(dst, value)
        value.zero_()  # the host value may change once copy returns: what was copied is in a pinned buffer
    assert sum(b is not None for b in stream._buffers) == IN_FLIGHT
    assert all(b is None or b.is_pinned() for b in stream._buffers)
    stream.finish()
    for dst, value in zip(dsts, expected):
        assert torch.equal(dst.cpu(), value)
