"""Text classification data module over CSV/TSV/JSONL files: cleaning, a vocabulary built on the training
split only, padding/truncation, labels mapped to ids."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_optim.checks import check_choice
from lightning_optim.data.cleaning.text import TextCleaner
from lightning_optim.data.datasets import batched_collate
from lightning_optim.data.image_datamodule import seeded_holdout

log = logging.getLogger(__name__)

#: file formats and the endings they are inferred from
TEXT_FORMATS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
    "jsonl": (".jsonl", ".ndjson"),
}


class Vocabulary:
    """Token <-> id map with padding id 0 and unknown id 1.

    Args:
        tokens: the known tokens, most frequent first (ids 2, 3, ...).

    Example::

        vocab = Vocabulary.build([["a", "b", "a"], ["c"]], min_freq=1)
        vocab.encode(["a", "zzz"], max_length=4)  # [2, 1, 0, 0]
    """

    PAD, UNK = "<pad>", "<unk>"
    pad_id, unk_id = 0, 1

    def __init__(self, tokens: Sequence[str]) -> None:
        self.itos: list[str] = [self.PAD, self.UNK] + [t for t in tokens if t not in (self.PAD, self.UNK)]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Count tokens and keep those seen at least ``min_freq`` times, most frequent first (ties by token).

        ``max_size`` bounds the whole vocabulary, padding and unknown included.
        """
        counts = Counter(t for tokens in token_lists for t in tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max(0, max_size - 2)]
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str], max_length: int | None = None, pad: bool = True) -> list[int]:
        """Token ids, truncated to ``max_length`` and (with ``pad``) padded with 0 up to it."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        if max_length is not None:
            ids = ids[:max_length]
            if pad:
                ids += [self.pad_id] * (max_length - len(ids))
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` (padding left out)."""
        return [self.itos[i] for i in ids if i != self.pad_id]


def _infer_format(path: Path, file_format: str | None) -> str:
    fmt = file_format
    if fmt is None:
        fmt = next((f for f, ends in TEXT_FORMATS.items() if path.suffix.lower() in ends), None)
        if fmt is None:
            raise ValueError(
                f"Cannot infer `file_format` of {str(path)!r} from its ending; allowed formats: {list(TEXT_FORMATS)} "
                f"(endings {sorted(e for ends in TEXT_FORMATS.values() for e in ends)})."
            )
    return check_choice("file_format", fmt, TEXT_FORMATS)


def _existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, checked to be an existing file (else ``FileNotFoundError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file {str(path)!r} does not exist.")
    return path


def check_text_columns(
    path: str | os.PathLike, text_column: str, label_column: str | None, file_format: str | None = None
) -> None:
    """Check, from the header (CSV/TSV) or the first record (JSONL) only, that the columns exist.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown format; a missing text or label column (the message lists the columns found).
    """
    path = _existing_file(path)
    fmt = _infer_format(path, file_format)
    with path.open(encoding="utf-8", newline="") as fh:
        if fmt == "jsonl":
            first = next((line for line in fh if line.strip()), None)
            try:
                columns = sorted(json.loads(first)) if first is not None else []
            except (json.JSONDecodeError, TypeError):
                return  # the full read reports the broken line
        else:
            columns = next(csv.reader(fh, delimiter="," if fmt == "csv" else "\t"), [])
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column is not None and column not in columns:
            raise ValueError(
                f"`{option}` {column!r} is not a column of {str(path)!r}; columns found: {columns}."
            )


def read_text_file(
    path: str | os.PathLike, text_column: str, label_column: str | None, file_format: str | None = None
) -> tuple[list[str], list[str | None]]:
    """Read ``(texts, labels)`` from a CSV, TSV or JSONL file.

    Args:
        path: the file.
        text_column: column (CSV/TSV header) or key (JSONL) of the text.
        label_column: column or key of the label; ``None`` reads no labels (all ``None``).
        file_format: ``"csv"``, ``"tsv"`` or ``"jsonl"``; inferred from the file ending when ``None``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown format; a missing text or label column (the message lists the columns found).
    """
    path = _existing_file(path)
    fmt = _infer_format(path, file_format)
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{str(path)!r} line {line_no} is not JSON: {err}") from err
        columns = sorted({k for r in rows[:100] for k in r})
    else:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="," if fmt == "csv" else "\t")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column is not None and column not in columns:
            raise ValueError(
                f"`{option}` {column!r} is not a column of {str(path)!r}; columns found: {columns}."
            )
    texts = [str(r.get(text_column) or "") for r in rows]
    labels = [
        None if label_column is None or r.get(label_column) in (None, "") else str(r[label_column])
        for r in rows
    ]
    return texts, labels


class TokenDataset(Dataset):
    """Encoded texts ``(N, max_length)`` with labels; batches are trimmed to their longest text."""

    def __init__(self, tokens: Tensor, labels: Tensor, return_index: bool = False) -> None:
        self.tokens = tokens
        self.labels = labels
        self.lengths = (tokens != Vocabulary.pad_id).sum(1)
        self.return_index = return_index

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int):
        item = (self.tokens[i], self.labels[i])
        return (*item, torch.tensor(i)) if self.return_index else item

    def __getitems__(self, indices: Sequence[int]):
        index = torch.as_tensor(indices, dtype=torch.long)
        longest = max(1, int(self.lengths[index].max())) if len(index) else 1
        item = (self.tokens[index, :longest], self.labels[index])
        return (*item, index) if self.return_index else item


def _label_order(labels: Iterable[str]) -> list[str]:
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


class TextClassificationDataModule(pl.LightningDataModule):
    """Text classification from CSV/TSV/JSONL files, cleaned, tokenized, padded and batched.

    The text goes through a :class:`~lightning_optim.data.cleaning.text.TextCleaner`, is split into
    Unicode ``\\w+`` tokens (CJK characters one by one), mapped to ids by a :class:`Vocabulary` built on the
    training split only, truncated to ``max_length`` and padded with 0; each batch is trimmed to its
    longest text. Labels (any strings or numbers) map to ids ``0..num_classes-1`` in sorted order of the
    training labels. Rows whose label is missing or whose text is empty after cleaning are dropped and
    reported. The vocabulary and the label map are in ``state_dict`` and so travel in checkpoints.

    Args:
        train_file: the training file.
        val_file: the validation file; when ``None``, a seeded ``val_split`` of ``train_file``.
        test_file: the test file (optional).
        predict_file: the file to predict (labels optional; default: ``test_file``).
        text_column: name of the text column (CSV/TSV header or JSONL key).
        label_column: name of the label column.
        file_format: ``"csv"``, ``"tsv"``, ``"jsonl"`` or ``None`` to infer it from the file ending.
        cleaning: :class:`TextCleaner` options, e.g. ``{"remove_stopwords": true}``; ``None`` for its defaults.
        max_length: tokens kept per text (truncation), and the padded length.
        min_freq: a token enters the vocabulary when seen this many times in the training split.
        max_vocab_size: bound on the vocabulary size (padding and unknown included).
        val_split: fraction of ``train_file`` held out when there is no ``val_file``, in ``(0, 1)``.
        batch_size: training batch size (``BatchSizeFinder`` tunes it).
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        num_workers: DataLoader workers.
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        seed: seed of the train/val split.
        return_index: batches carry each sample's index as a third element.

    Raises:
        ValueError: ``val_split`` outside (0, 1), non-positive sizes, an unknown cleaning option or file
            format, a missing text/label column (checked from each file's header at construction); at
            setup, a validation/test label unseen in training.
        FileNotFoundError: a missing file (at construction).

    Example::

        dm = TextClassificationDataModule("reviews.csv", text_column="review", label_column="sentiment",
                                          cleaning={"remove_stopwords": True}, max_length=64)
        module = ClassificationModule(TextClassifier(vocab_size=dm.vocab_size, num_classes=dm.num_classes))
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        file_format: str | None = None,
        cleaning: dict[str, Any] | None = None,
        max_length: int = 128,
        min_freq: int = 1,
        max_vocab_size: int | None = None,
        val_split: float = 0.1,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 42,
        return_index: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"`val_split` must be in (0, 1), got {val_split}.")
        for option, value in (("max_length", max_length), ("min_freq", min_freq), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"`{option}` must be >= 1, got {value}.")
        if max_vocab_size is not None and max_vocab_size < 3:
            raise ValueError(
                f"`max_vocab_size` must be >= 3 (padding, unknown, one token) or None, got {max_vocab_size}."
            )
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"`eval_batch_size` must be >= 1 or None, got {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        if file_format is not None:
            check_choice("file_format", file_format, TEXT_FORMATS, hint=" or None")
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.predict_file = predict_file
        self.text_column = text_column
        self.label_column = label_column
        self.file_format = file_format
        self.cleaning = cleaning
        self.cleaner = TextCleaner.from_options(cleaning)
        self.max_length = max_length
        self.min_freq = min_freq
        self.max_vocab_size = max_vocab_size
        self.val_split = val_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.return_index = return_index
        for path, labelled in (
            (train_file, True),
            (val_file, True),
            (test_file, True),
            (predict_file, False),
        ):
            if path is not None:  # fail at construction on a missing file or column (header only)
                check_text_columns(path, text_column, label_column if labelled else None, file_format)
        self.vocab: Vocabulary | None = None
        self.label_names: list[str] | None = None
        self.cleaning_report: dict[str, dict[str, int]] = {}
        self._splits: dict[str, tuple[list[list[str]], list[str | None]]] | None = None
        self._datasets: dict[str, TokenDataset] = {}

    # ---------------------------------------------------------------------------------------- reading
    def _read(self, path: str, split: str, labelled: bool = True) -> tuple[list[list[str]], list[str | None]]:
        texts, labels = read_text_file(
            path, self.text_column, self.label_column if labelled else None, self.file_format
        )
        return self._clean(split, texts, labels, drop=labelled)

    def _clean(
        self, split: str, texts: list[str], labels: list[str | None], drop: bool = True
    ) -> tuple[list[list[str]], list[str | None]]:
        tokens = [self.cleaner.tokenize(t) for t in texts]
        report = {"rows": len(texts), "missing_label": 0, "empty_text": 0}
        if drop:
            kept_tokens, kept_labels = [], []
            for toks, label in zip(tokens, labels):
                if label is None:
                    report["missing_label"] += 1
                elif not toks:
                    report["empty_text"] += 1
                else:
                    kept_tokens.append(toks)
                    kept_labels.append(label)
            tokens, labels = kept_tokens, kept_labels
        report["kept"] = len(tokens)
        self.cleaning_report[split] = report
        level = logging.WARNING if report["kept"] < report["rows"] else logging.INFO
        log.log(level, "Text cleaning (%s): %s", split, report)
        return tokens, labels

    def _prepare(self) -> dict[str, tuple[list[list[str]], list[str | None]]]:
        """Read, clean and split the files; build the vocabulary and label map on the training split."""
        if self._splits is not None:
            return self._splits
        train_tokens, train_labels = self._read(self.train_file, "train")
        if not train_tokens:
            raise ValueError(
                f"`train_file` {self.train_file!r} has no usable row: {self.cleaning_report['train']}."
            )
        splits: dict[str, tuple[list[list[str]], list[str | None]]] = {}
        if self.val_file is not None:
            splits["train"] = (train_tokens, train_labels)
            splits["val"] = self._read(self.val_file, "val")
        else:
            keep, held = seeded_holdout(len(train_tokens), self.val_split, self.seed)
            splits["train"] = ([train_tokens[i] for i in keep], [train_labels[i] for i in keep])
            splits["val"] = ([train_tokens[i] for i in held], [train_labels[i] for i in held])
        if self.test_file is not None:
            splits["test"] = self._read(self.test_file, "test")
        if self.vocab is None:  # a vocabulary restored from a checkpoint is kept
            self.vocab = Vocabulary.build(splits["train"][0], self.min_freq, self.max_vocab_size)
        if self.label_names is None:
            self.label_names = _label_order(lbl for lbl in splits["train"][1] if lbl is not None)
        known = set(self.label_names)
        for name in ("val", "test"):
            if name in splits:
                unseen = sorted({lbl for lbl in splits[name][1] if lbl is not None and lbl not in known})
                if unseen:
                    raise ValueError(
                        f"{name} labels {unseen[:10]} (column `label_column`={self.label_column!r}) are not among the "
                        f"training labels {self.label_names[:20]}."
                    )
        self._splits = splits
        return splits

    # ---------------------------------------------------------------------------------------- metadata
    @property
    def num_classes(self) -> int:
        """Number of distinct training labels (reads the files on first use)."""
        self._prepare()
        return len(self.label_names)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size, padding and unknown ids included (reads the files on first use)."""
        self._prepare()
        return len(self.vocab)

    # ---------------------------------------------------------------------------------------- setup
    def encode(self, tokens: list[list[str]], labels: list[str | None]) -> tuple[Tensor, Tensor]:
        """Token lists and label names -> ``(ids (N, max_length), label ids (N,))``; unlabelled rows get -1."""
        self._prepare()
        ids = torch.tensor([self.vocab.encode(t, self.max_length) for t in tokens], dtype=torch.long)
        ids = ids.view(len(tokens), self.max_length)
        index = {name: i for i, name in enumerate(self.label_names)}
        y = torch.tensor([index[lbl] if lbl is not None else -1 for lbl in labels], dtype=torch.long)
        return ids, y

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Clean, tokenize and encode raw strings with the fitted vocabulary: ``(N, max_length)``."""
        self._prepare()
        return self.encode([self.cleaner.tokenize(t) for t in texts], [None] * len(texts))[0]

    def _dataset(self, split: str) -> TokenDataset:
        if split not in self._datasets:
            splits = self._prepare()
            if split == "predict":
                path = self.predict_file or self.test_file
                if path is None:
                    raise ValueError("Set `predict_file` (or `test_file`) to predict.")
                texts, _ = read_text_file(path, self.text_column, None, self.file_format)
                tokens, labels = self._clean("predict", texts, [None] * len(texts), drop=False)
            elif split not in splits:
                raise ValueError(f"No {split} data: set `{split}_file`.")
            else:
                tokens, labels = splits[split]
            self._datasets[split] = TokenDataset(*self.encode(tokens, labels), return_index=self.return_index)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        return DataLoader(
            self._dataset(split),
            batch_size=self.batch_size if train else (self.eval_batch_size or self.batch_size),
            shuffle=train,
            collate_fn=batched_collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The vocabulary and the label names (fitted on the training split)."""
        self._prepare()
        return {
            "vocab": list(self.vocab.itos),
            "label_names": list(self.label_names),
            "max_length": self.max_length,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the vocabulary and label map of the run that saved them (encoded data is rebuilt)."""
        self.vocab = Vocabulary(state_dict["vocab"][2:])
        self.label_names = list(state_dict["label_names"])
        self._datasets = {}
