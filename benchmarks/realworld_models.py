"""The target models of the real-checkpoint harness (``realworld_eval.py``): clean re-implementations.

Each is what a user who ports a package's network by hand would write: the same
computation under its own names (Caffe-style ``convN`` Linears, per-layer LSTMs,
LSTMCell stacks, split forward/backward LSTMs, a ModuleList of LPIPS heads). The
harness proves each against the package's own model before it scores a transfer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CaffeMTCNN", "CellSpeakerEncoder", "LPIPSHead", "LayeredSpeakerEncoder", "NamedCRNN", "SileroPort",
    "SileroVAD", "SplitBiLSTM", "SplitCRNN",
]


class CaffeMTCNN(nn.Module):
    """An MTCNN stage as ``fdet`` names it: trunk under ``features.``, Linear layers named ``convN``.

    Built from the stage's channel list; the flatten order is facenet's ((C,W,H): permute before view).
    """

    # (in, out, kernel, the max-pool after it as (kernel, stride) or None)
    _TRUNKS = {"p": [(3, 10, 3, (2, 2)), (10, 16, 3, None), (16, 32, 3, None)],
               "r": [(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None), (576, 128, 0, None)],
               "o": [(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None),
                     (1152, 256, 0, None)]}
    _HEADS = {"p": ("conv4", 32, (2, 4)), "r": ("conv5", 128, (2, 4)), "o": ("conv6", 256, (2, 4, 10))}

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (c_in, c_out, k, pool) in enumerate(self._TRUNKS[kind], 1):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, k) if k else nn.Linear(c_in, c_out)
            layers[f"prelu{i}"] = nn.PReLU(c_out)
            if pool:
                layers[f"pool{i}"] = nn.MaxPool2d(*pool, ceil_mode=True)
        self.features = nn.ModuleDict(layers)
        name, c, outs = self._HEADS[kind]
        for j, n in enumerate(outs, 1):
            setattr(self, f"{name}_{j}", nn.Conv2d(c, n, 1) if kind == "p" else nn.Linear(c, n))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        for name, layer in self.features.items():
            if isinstance(layer, nn.Linear):
                x = x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)
            x = layer(x)
        if self.kind == "p":
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), 1)
        if self.kind == "r":
            return self.conv5_2(x), torch.softmax(self.conv5_1(x), 1)
        return self.conv6_2(x), self.conv6_3(x), torch.softmax(self.conv6_1(x), 1)


class LayeredSpeakerEncoder(nn.Module):
    """Resemblyzer's encoder with one ``nn.LSTM`` per layer (as a per-layer dropout/probe would need)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.LSTM(40, 256, batch_first=True)] +
                                    [nn.LSTM(256, 256, batch_first=True) for _ in range(2)])
        self.proj = nn.Linear(256, 256)

    def forward(self, mels: Tensor) -> Tensor:
        x = mels
        for layer in self.layers:
            x, (h, _) = layer(x)
        e = F.relu(self.proj(h[-1]))
        return e / torch.norm(e, dim=1, keepdim=True)


class CellSpeakerEncoder(nn.Module):
    """The same encoder as a stack of ``nn.LSTMCell`` unrolled by hand (a streaming implementation)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(40, 256), nn.LSTMCell(256, 256), nn.LSTMCell(256, 256)])
        self.embed = nn.Linear(256, 256)

    def forward(self, mels: Tensor) -> Tensor:
        b = mels.shape[0]
        state = [(mels.new_zeros(b, 256), mels.new_zeros(b, 256)) for _ in self.cells]
        for t in range(mels.shape[1]):
            x = mels[:, t]
            for i, cell in enumerate(self.cells):
                state[i] = cell(x, state[i])
                x = state[i][0]
        e = F.relu(self.embed(x))
        return e / torch.norm(e, dim=1, keepdim=True)


class SileroPort(nn.Module):
    """The package's own definition of ``silero_vad_16k.safetensors`` (``tinygrad_model.TinySileroVAD``), in torch."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, 256, stride=128, bias=False)
        self.conv1, self.conv2 = nn.Conv1d(129, 128, 3, padding=1), nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3, self.conv4 = nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell, self.final_conv = nn.LSTMCell(128, 128), nn.Conv1d(128, 1, 1)

    def forward(self, chunks: Tensor) -> Tensor:  # (steps, batch, 576): a stream of 64 + 512 samples
        state, outs = None, []
        for x in chunks:
            x = self.stft_conv(F.pad(x, (0, 64), "reflect").unsqueeze(1))
            x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
                x = conv(x).relu()
            state = self.lstm_cell(x.squeeze(-1), state)
            outs.append(self.final_conv(state[0].unsqueeze(-1).relu()).sigmoid().squeeze(1).mean(1))
        return torch.stack(outs)


class SileroVAD(nn.Module):
    """A re-implementation in the layout of Silero's TorchScript model, with an ``nn.LSTM`` decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = nn.Module()
        self.stft.register_buffer("forward_basis_buffer", torch.zeros(258, 1, 256))
        self.encoder = nn.ModuleList()
        for c_in, c_out, s in ((129, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1)):
            block = nn.Module()
            block.reparam_conv = nn.Conv1d(c_in, c_out, 3, stride=s, padding=1)
            self.encoder.append(block)
        self.decoder = nn.Module()
        self.decoder.rnn = nn.LSTM(128, 128)
        self.decoder.decoder = nn.Sequential(nn.Dropout(0.1), nn.ReLU(), nn.Conv1d(128, 1, 1), nn.Sigmoid())

    def forward(self, chunks: Tensor) -> Tensor:
        feats = []
        for x in chunks:
            x = F.conv1d(F.pad(x, (0, 64), "reflect").unsqueeze(1), self.stft.forward_basis_buffer, stride=128)
            x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
            for block in self.encoder:
                x = block.reparam_conv(x).relu()
            feats.append(x.squeeze(-1))
        h, _ = self.decoder.rnn(torch.stack(feats))  # (steps, batch, 128)
        return torch.stack([self.decoder.decoder(s.unsqueeze(-1)).squeeze(1).mean(1) for s in h])


class NamedCRNN(nn.Module):
    """The same CRNN with named stages (no parameter-free layers in the numbering) and its own leaf names."""

    def __init__(self, classes: int = 984) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int, k: int = 3, pad: int = 1, pool: Any = None) -> nn.Sequential:
            mods: OrderedDict[str, nn.Module] = OrderedDict(conv=nn.Conv2d(c_in, c_out, k, padding=pad),
                                                            norm=nn.BatchNorm2d(c_out), act=nn.ReLU())
            if pool is not None:
                mods["pool"] = nn.MaxPool2d(pool, pool)
            return nn.Sequential(mods)

        self.backbone = nn.Sequential(OrderedDict(
            stage1=stage(1, 64, pool=2), stage2=stage(64, 128, pool=2), stage3a=stage(128, 256),
            stage3b=stage(256, 256, pool=(2, 1)), stage4a=stage(256, 512), stage4b=stage(512, 512, pool=(2, 1)),
            stage5=stage(512, 512, k=2, pad=0)))
        self.sequence = nn.LSTM(512, 256, num_layers=2, bidirectional=True)
        self.classifier = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x).mean(dim=2).permute(2, 0, 1)
        return self.classifier(self.sequence(f)[0])


class SplitBiLSTM(nn.Module):
    """A 2-layer bidirectional LSTM as separate per-layer forward and backward modules (as ONNX/TF ports split it)."""

    def __init__(self, inputs: int = 512, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        sizes = [inputs] + [2 * hidden] * (layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(n, hidden) for n in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(n, hidden) for n in sizes)

    def forward(self, x: Tensor) -> Tensor:  # (T, B, C), time-major
        for fwd, bwd in zip(self.forward_layers, self.backward_layers):
            x = torch.cat([fwd(x)[0], bwd(x.flip(0))[0].flip(0)], -1)
        return x


class SplitCRNN(NamedCRNN):
    """:class:`NamedCRNN` whose BiLSTM is split per layer and direction."""

    def __init__(self, classes: int = 984) -> None:
        super().__init__(classes)
        self.sequence = SplitBiLSTM()  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.sequence(self.backbone(x).mean(dim=2).permute(2, 0, 1)))


class LPIPSHead(nn.Module):
    """LPIPS' learned weights as one ``ModuleList`` of 1x1 convs (``layers.N.weight``)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
