"""Small networks the tests share (one definition each): models our tools must handle or refuse clearly."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class NoLayers(nn.Module):
    """A bare matrix product: no conv or linear layer to quantize."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(64, 10) * 0.1)

    def forward(self, x):
        return torch.flatten(x, 1) @ self.weight


class Residual(nn.Module):
    """A residual addition of two conv outputs on 1x8x8 inputs: a float ``+`` the eager int8 path cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        h = self.conv1(x)
        return self.fc(torch.flatten(h + self.conv2(h), 1))


#: the hand-checked MLP of the measurement tests: sizes
IN, HIDDEN, OUT = 10, 20, 3


def mlp() -> nn.Sequential:
    """IN -> HIDDEN -> OUT with a ReLU, seeded (figures computed by hand in the measurement tests)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def int8_mlp(model: nn.Module) -> nn.Module:
    """``model`` quantized to int8 by eager ``torch.ao`` (x86), calibrated on 64 random inputs."""
    import torch.ao.quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = tq.QuantWrapper(copy.deepcopy(model)).eval()
        q.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(q, inplace=True)
        q(torch.randn(64, IN))
        return tq.convert(q)


# ---------------------------------------------------------------------------------------------------------
# one tiny network per dependency pattern of structured pruning (random init, 3x16x16 inputs)
class ResidualCNN(nn.Module):
    """A stem, two residual blocks on one stream (their additions tie the stream's channels), a head."""

    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                nn.BatchNorm2d(2 * width),
                nn.ReLU(),
                nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConcatCNN(nn.Module):
    """Two branches concatenated along the channels, then a convolution and a flatten -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 10, 1), nn.ReLU())
        self.mix = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(12 * 4, 5)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(torch.flatten(self.pool(torch.relu(self.mix(h))), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class SEDepthwiseCNN(nn.Module):
    """An inverted residual (1x1 expand, depthwise 3x3, squeeze-excitation, 1x1 project) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()
        )
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.SiLU()
        )
        self.se = SqueezeExcite(24, 6)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        return self.head(x.mean((2, 3)))


class GroupedCNN(nn.Module):
    """A grouped convolution (groups=2, not depthwise): the channels around it are kept, with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv3(torch.relu(self.grouped(torch.relu(self.conv1(x))))))
        return self.head(h.mean((2, 3)))


class TokenMLPBlock(nn.Module):
    """A pre-norm transformer MLP block on (batch, tokens, width) inputs: the hidden neurons can go, the
    residual stream (behind a layer norm) stays."""

    def __init__(self, width: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class TokenClassifier(nn.Module):
    """(batch, tokens, features) -> a linear embedding, two pre-norm MLP blocks, mean over tokens, a head."""

    def __init__(self, features: int = 8, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.blocks = nn.Sequential(TokenMLPBlock(width, 2 * width), TokenMLPBlock(width, 2 * width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


class SplitQKVAttention(nn.Module):
    """Self-attention written out as users write it: separate q/k/v projections, heads by ``view`` and
    ``transpose``, ``softmax(q @ k^T) @ v`` (or ``scaled_dot_product_attention`` with ``fused``), an output
    projection; ``num_heads`` is read in ``forward``."""

    def __init__(self, width: int = 16, num_heads: int = 4, fused: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, width // num_heads, fused
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class PackedQKVAttention(nn.Module):
    """timm's layout: one ``qkv`` projection reshaped to (3, batch, heads, tokens, head_dim), ``unbind``,
    ``scaled_dot_product_attention``, ``attn_dim`` in ``forward``."""

    def __init__(self, width: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.qkv = nn.Linear(width, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, width)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.attn_dim))


class TransformerBlock(nn.Module):
    """A pre-norm transformer layer: attention (``kind``: "split", "fused", "packed" or torch's "mha") and an
    MLP, each with a residual connection."""

    def __init__(self, width: int = 16, num_heads: int = 4, kind: str = "split") -> None:
        super().__init__()
        self.kind = kind
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        if kind == "mha":
            self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        elif kind == "packed":
            self.attn = PackedQKVAttention(width, num_heads)
        else:
            self.attn = SplitQKVAttention(width, num_heads, fused=kind == "fused")
        self.mlp = TokenMLPBlock(width, 2 * width)

    def forward(self, x):
        h = self.norm1(x)
        if self.kind == "mha":
            x = x + self.attn(h, h, h, need_weights=False)[0]
        else:
            x = x + self.attn(h)
        return self.mlp(x)


class TinyViT(nn.Module):
    """(batch, tokens, features) -> embedding, ``depth`` transformer layers, mean over tokens, a head."""

    def __init__(
        self, features: int = 8, width: int = 16, num_heads: int = 4, depth: int = 2, kind: str = "split"
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.blocks = nn.Sequential(*[TransformerBlock(width, num_heads, kind) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


class ResBlock(nn.Module):
    """``x + bn(conv(relu(bn(conv(x)))))``: the skip connection inside the block."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def branch(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        return x + self.branch(x)


class TinyResNet(nn.Module):
    """A stem, four residual blocks in a Sequential, a head (3x16x16 inputs)."""

    def __init__(self, width: int = 8, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """torchvision's ``LayerNorm2d``: a layer norm across the channels of an ``(N, C, H, W)`` tensor, by a
    permutation to channels-last, ``F.layer_norm`` and the permutation back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise 7x7, channels-last ``nn.LayerNorm``, a 4x MLP, a layer scale, a residual."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * width, width)
        self.layer_scale = nn.Parameter(torch.full((width, 1, 1), 0.5))

    def forward(self, x):
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.fc2(self.act(self.fc1(self.norm(h)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * h


class TinyConvNeXt(nn.Module):
    """A stem (2x2 stride-2 conv, channels-first layer norm), two blocks, a downsample (channels-first layer
    norm, 2x2 stride-2 conv), one block, mean pooling, a channels-first layer norm and a head (3x16x16 inputs):
    every residual stream goes through layer norms across its channels."""

    def __init__(self, widths: tuple[int, int] = (8, 16), classes: int = 10) -> None:
        super().__init__()
        w0, w1 = widths
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 2, stride=2), ChannelsFirstLayerNorm(w0, eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(w0), ConvNeXtBlock(w0))
        self.down = nn.Sequential(ChannelsFirstLayerNorm(w0, eps=1e-6), nn.Conv2d(w0, w1, 2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(w1))
        self.norm = ChannelsFirstLayerNorm(w1, eps=1e-6)
        self.head = nn.Linear(w1, classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(torch.flatten(self.norm(x.mean((2, 3), keepdim=True)), 1))


def tiny_bert_config(**overrides):
    """A small ``transformers.BertConfig`` (2 layers, 4 heads of 8, hidden 32, 100 tokens): random init, no
    download. Raises ImportError without transformers (callers skip with ``pytest.importorskip``)."""
    import transformers

    settings = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=16,
    )
    settings.update(overrides)
    return transformers.BertConfig(**settings)
