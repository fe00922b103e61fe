"""A small text classifier over token ids."""

from __future__ import annotations

from torch import Tensor, nn


class TextClassifier(nn.Module):
    """Embedding, masked mean pooling over tokens, a hidden layer and a linear classifier.

    Args:
        vocab_size: number of token ids (index ``padding_idx`` is padding).
        num_classes: output classes.
        embed_dim: embedding width.
        hidden: hidden width (0 for a linear classifier on the pooled embedding).
        dropout: dropout on the pooled embedding.
        padding_idx: token id used for padding; it is ignored by the pooling.
    """

    def __init__(
        self,
        vocab_size: int = 20000,
        num_classes: int = 2,
        embed_dim: int = 64,
        hidden: int = 64,
        dropout: float = 0.1,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = []
        width = embed_dim
        if hidden:
            layers += [nn.Linear(embed_dim, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != self.padding_idx).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(tokens) * mask).sum(1)
        pooled = summed / mask.sum(1).clamp_min(1.0)
        return self.classifier(self.dropout(pooled))
