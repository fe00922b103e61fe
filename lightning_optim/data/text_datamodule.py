"""Text classification data module over CSV/TSV/JSONL files: cleaning, a vocabulary built on the training
split only, padding/truncation, labels mapped to ids."""

from __future__ import annotations

import codecs
import csv
import io
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
from lightning_optim.data.files import read_file_bytes
from lightning_optim.data.image_datamodule import seeded_holdout
from lightning_optim.data.labels import canonical_label

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


#: the most bytes a text file may hold (it is read whole and decoded once): 1 GiB
MAX_TEXT_FILE_BYTES: int = 1 << 30
#: bytes read to check a file's header (or first JSONL record) at construction
HEADER_BYTES: int = 1 << 20


def check_encoding(encoding: str) -> str:
    """Validate a text encoding name (anything Python's ``codecs`` knows as a text encoding).

    Raises:
        ValueError: an unknown name, or a codec that is not a text encoding (``rot13``, ``zlib``).
    """
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ValueError(
            f"Unknown `encoding` {encoding!r}: not a Python text encoding; for example 'utf-8' (the default), "
            "'latin-1', 'cp1252', 'utf-16'."
        )
    return encoding


def _codec(encoding: str) -> str:
    """The codec that decodes ``encoding``: UTF-8 also drops a leading byte-order mark (files saved by Excel)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _decode_error(err: UnicodeDecodeError, data: bytes, path: str, option: str, encoding: str) -> ValueError:
    line = data.count(b"\n", 0, err.start) + 1
    bad = data[err.start : min(err.end, err.start + 8)].hex(" ")
    return ValueError(
        f"`{option}` {path!r} is not valid {encoding} text: byte(s) {bad} on line {line} ({err.reason}). Set "
        f"`encoding` to the file's encoding (for example `encoding: latin-1` or `encoding: cp1252` for Western "
        f"European text saved by older tools), or save the file as UTF-8."
    )


def _decode(data: bytes, path: str, option: str, encoding: str, final: bool = True) -> str:
    decoder = codecs.getincrementaldecoder(_codec(encoding))(errors="strict")
    try:
        return decoder.decode(data, final=final)
    except UnicodeDecodeError as err:
        raise _decode_error(err, data, path, option, encoding) from None
    except (ValueError, LookupError) as err:  # a codec's own complaint (an odd-length utf-16 file...)
        raise ValueError(
            f"`{option}` {path!r} cannot be decoded as {encoding}: {err}. Check `encoding`."
        ) from None


def _read_text(
    path: str | os.PathLike, option: str, encoding: str, max_bytes: int, header_only: bool = False
) -> tuple[str, str]:
    """``(path as text, decoded content)`` of a regular file (its first :data:`HEADER_BYTES` with ``header_only``)."""
    name = os.fsdecode(os.fspath(path))
    limit = min(max_bytes, HEADER_BYTES) if header_only else max_bytes
    data = read_file_bytes(name, option, limit, kind="a text file", prefix=header_only)
    return name, _decode(data, name, option, encoding, final=not header_only or len(data) < limit)


def _check_columns_distinct(text_column: str, label_column: str | None) -> None:
    if label_column is not None and text_column == label_column:
        raise ValueError(
            f"`text_column` and `label_column` are both {text_column!r}: the model would read the label as its "
            "input; name the text column in `text_column` and the label column in `label_column`."
        )


def _delimiter(fmt: str) -> str:
    return "," if fmt == "csv" else "\t"


def _check_header(header: list[str], path: str, option: str) -> None:
    seen: dict[str, int] = {}
    for i, column in enumerate(header):
        if column in seen:
            raise ValueError(
                f"`{option}` {path!r}: the header names column {column!r} twice (columns {seen[column] + 1} and "
                f"{i + 1}); rename one: a column is read by its name, and neither is taken silently."
            )
        seen[column] = i


def _csv_rows(text: str, path: str, option: str, fmt: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line number, row), ...])`` of CSV/TSV text; every row has as many fields as the header."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(fmt))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ValueError(f"`{option}` {path!r} line {start} is not valid {fmt.upper()}: {err}.") from None
        if header is None:
            header = row
            _check_header(header, path, option)
            continue
        if not row:  # a blank line
            continue
        if len(row) != len(header):
            fix = (
                f'a field holding the delimiter {_delimiter(fmt)!r} must be quoted ("...")'
                if len(row) > len(header)
                else "every row has a field per column (an empty one for a missing label)"
            )
            raise ValueError(
                f"`{option}` {path!r} line {start} has {len(row)} field(s), the header has {len(header)} "
                f"({header[:8]}): {fix}; a row is never read with its fields shifted."
            )
        rows.append((start, row))
    if header is None:
        raise ValueError(
            f"`{option}` {path!r} is empty: a {fmt.upper()} file begins with a header row naming its columns."
        )
    return header, rows


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_record(line: str, line_no: int, path: str, option: str) -> dict[str, Any]:
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise ValueError(
            f"`{option}` {path!r} line {line_no} names the key {err.args[0]!r} twice; rename one: a key is read "
            "by its name, and neither is taken silently."
        ) from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, too deep nesting
        raise ValueError(f"`{option}` {path!r} line {line_no} is not JSON: {str(err)[:200]}") from None
    if not isinstance(record, dict):
        raise ValueError(
            f"`{option}` {path!r} line {line_no} is a JSON {type(record).__name__}, not an object: each line of a "
            'JSONL file is one record, {"text": ..., "label": ...}.'
        )
    return record


def _jsonl_records(text: str, path: str, option: str) -> list[tuple[int, dict[str, Any]]]:
    # split on "\n" only: a JSON string may hold U+2028 and other characters str.splitlines() splits on
    return [
        (line_no, _json_record(line, line_no, path, option))
        for line_no, line in enumerate(text.split("\n"), 1)
        if line.strip()
    ]


def _missing_column(option: str, column: str, path: str, columns: list[str]) -> ValueError:
    return ValueError(f"`{option}` {column!r} is not a column of {path!r}; columns found: {columns}.")


def check_text_columns(
    path: str | os.PathLike,
    text_column: str,
    label_column: str | None,
    file_format: str | None = None,
    *,
    encoding: str = "utf-8",
    option: str = "train_file",
    max_bytes: int = MAX_TEXT_FILE_BYTES,
) -> None:
    """Check, from the header (CSV/TSV) or the first record (JSONL) only, that the columns exist.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown format; a missing text or label column (the message lists the columns found); one
            column for both; a duplicated header name; a path that is not a regular file; undecodable bytes
            (the message names ``encoding``).
    """
    _check_columns_distinct(text_column, label_column)
    fmt = _infer_format(Path(path), file_format)
    name, text = _read_text(path, option, encoding, max_bytes, header_only=True)
    if fmt == "jsonl":
        first = next(((i, line) for i, line in enumerate(text.split("\n"), 1) if line.strip()), None)
        if first is None:
            return  # the full read reports an empty file
        try:
            columns = sorted(_json_record(first[1], first[0], name, option))
        except ValueError as err:
            if "twice" in str(err):
                raise
            return  # a cut-off first line (a huge record) or broken JSON: the full read reports it
    else:
        try:
            header = next(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(fmt)), None)
        except csv.Error:
            return  # the full read reports it with its line
        if header is None:
            raise ValueError(
                f"`{option}` {name!r} is empty: a {fmt.upper()} file begins with a header row naming its columns."
            )
        _check_header(header, name, option)
        columns = header
    for col_option, column in (("text_column", text_column), ("label_column", label_column)):
        if column is not None and column not in columns:
            raise _missing_column(col_option, column, name, columns)


def _text_value(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):  # a number (or bool) where text was expected: its JSON spelling
        return json.dumps(value)
    raise ValueError(f"The text{where} is a JSON {type(value).__name__}; a text is a string.")


def read_text_file(
    path: str | os.PathLike,
    text_column: str,
    label_column: str | None,
    file_format: str | None = None,
    *,
    encoding: str = "utf-8",
    option: str = "train_file",
    max_bytes: int = MAX_TEXT_FILE_BYTES,
) -> tuple[list[str], list[str | None]]:
    """Read ``(texts, labels)`` from a CSV, TSV or JSONL file.

    Labels come in their canonical form (:func:`~lightning_optim.data.labels.canonical_label`: ``"1.0"``,
    ``" 1"`` and ``1`` are ``"1"``); a missing or empty label is ``None``.

    Args:
        path: the file (a regular file of at most ``max_bytes`` bytes).
        text_column: column (CSV/TSV header) or key (JSONL) of the text.
        label_column: column or key of the label; ``None`` reads no labels (all ``None``).
        file_format: ``"csv"``, ``"tsv"`` or ``"jsonl"``; inferred from the file ending when ``None``.
        encoding: the file's text encoding (UTF-8 by default; a UTF-8 byte-order mark is dropped).
        option: the option that names the file, for the messages.
        max_bytes: the largest file read.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: anything else, naming the file (and the line where there is one): unknown format; a
            missing text or label column (the message lists the columns found); one column for both; a
            duplicated header name or JSON key; a row with more or fewer fields than the header; a line that
            is not a JSON object; bytes that are not valid in ``encoding`` (the message names the option);
            a NaN/inf label; a path that is not a regular file or is larger than ``max_bytes``.
    """
    _check_columns_distinct(text_column, label_column)
    fmt = _infer_format(Path(path), file_format)
    name, text = _read_text(path, option, encoding, max_bytes)
    texts: list[str] = []
    raw_labels: list[tuple[Any, str]] = []
    if fmt == "jsonl":
        records = _jsonl_records(text, name, option)
        columns = sorted({k for _, r in records[:100] for k in r})
        for col_option, column in (("text_column", text_column), ("label_column", label_column)):
            if column is not None and column not in columns:
                raise _missing_column(col_option, column, name, columns)
        for line_no, record in records:
            where = f" ({name!r} line {line_no})"
            texts.append(_text_value(record.get(text_column), where))
            raw_labels.append((record.get(label_column) if label_column is not None else None, where))
    else:
        header, rows = _csv_rows(text, name, option, fmt)
        for col_option, column in (("text_column", text_column), ("label_column", label_column)):
            if column is not None and column not in header:
                raise _missing_column(col_option, column, name, header)
        text_index = header.index(text_column)
        label_index = header.index(label_column) if label_column is not None else None
        for line_no, row in rows:
            texts.append(row[text_index])
            raw_labels.append(
                (row[label_index] if label_index is not None else None, f" ({name!r} line {line_no})")
            )
    labels = [canonical_label(value, where) for value, where in raw_labels]
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
    training labels, each in one canonical form (:func:`~lightning_optim.data.labels.canonical_label`:
    ``"1"``, ``"1.0"``, ``" 1"`` and the JSON number ``1`` are one class ``"1"``; letters keep their case).
    Rows whose label is missing or whose text is empty after cleaning are dropped and reported. A row with
    more or fewer fields than the header, a header naming a column twice, a line that is not a JSON object,
    bytes that are not valid in ``encoding`` and NaN labels are refused with the file and line. The vocabulary and the label map are in ``state_dict`` and so travel in checkpoints.

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
        encoding: the files' text encoding (``"utf-8"``, a byte-order mark dropped; ``"latin-1"``,
            ``"cp1252"``, ...).

    Raises:
        ValueError: ``val_split`` outside (0, 1), non-positive sizes, an unknown cleaning option, file
            format or ``encoding``, a missing text/label column, one column for both, a duplicated header
            name (checked from each file's header at construction); at setup, a validation/test label unseen
            in training, a malformed row or line, undecodable bytes, a NaN label, a training file with fewer
            than 2 usable rows (without ``val_file``), a validation or test file without a usable row.
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
        encoding: str = "utf-8",
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
        self.encoding = check_encoding(encoding)
        _check_columns_distinct(text_column, label_column)
        for option, path, labelled in (
            ("train_file", train_file, True),
            ("val_file", val_file, True),
            ("test_file", test_file, True),
            ("predict_file", predict_file, False),
        ):
            if path is not None:  # fail at construction on a missing file or column (header only)
                check_text_columns(
                    path,
                    text_column,
                    label_column if labelled else None,
                    file_format,
                    encoding=encoding,
                    option=option,
                )
        self.vocab: Vocabulary | None = None
        self.label_names: list[str] | None = None
        self.cleaning_report: dict[str, dict[str, int]] = {}
        self._splits: dict[str, tuple[list[list[str]], list[str | None]]] | None = None
        self._datasets: dict[str, TokenDataset] = {}

    # ---------------------------------------------------------------------------------------- reading
    def _read(self, path: str, split: str, labelled: bool = True) -> tuple[list[list[str]], list[str | None]]:
        texts, labels = read_text_file(
            path,
            self.text_column,
            self.label_column if labelled else None,
            self.file_format,
            encoding=self.encoding,
            option=f"{split}_file",
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
            if len(train_tokens) < 2:
                raise ValueError(
                    f"Too few samples to split: `train_file` {self.train_file!r} has {len(train_tokens)} usable row "
                    f"({self.cleaning_report['train']}), and `val_split`={self.val_split} holds out at least one for "
                    "validation, leaving none to train on; give at least 2 usable rows, or a `val_file`."
                )
            keep, held = seeded_holdout(len(train_tokens), self.val_split, self.seed)
            splits["train"] = ([train_tokens[i] for i in keep], [train_labels[i] for i in keep])
            splits["val"] = ([train_tokens[i] for i in held], [train_labels[i] for i in held])
        if self.test_file is not None:
            splits["test"] = self._read(self.test_file, "test")
        for name in ("val", "test"):
            if name in splits and not splits[name][0]:
                path = getattr(self, f"{name}_file")
                raise ValueError(
                    f"`{name}_file` {path!r} has no usable row: {self.cleaning_report[name]} (rows without a label or "
                    "with no token left after cleaning are dropped)."
                )
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
                        f"training labels {self.label_names[:20]} (labels are compared in their canonical form: "
                        "ends stripped, numbers in their shortest form)."
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
        """Token lists and label names -> ``(ids (N, max_length), label ids (N,))``; unlabelled rows get -1.

        Labels are compared in their canonical form (``"1.0"`` is ``"1"``).

        Raises:
            ValueError: a label that is not among the training labels.
        """
        self._prepare()
        ids = torch.tensor([self.vocab.encode(t, self.max_length) for t in tokens], dtype=torch.long)
        ids = ids.view(len(tokens), self.max_length)
        index = {name: i for i, name in enumerate(self.label_names)}
        y = []
        for label in labels:
            name = canonical_label(label)
            if name is not None and name not in index:
                raise ValueError(f"Label {label!r} is not among the training labels {self.label_names[:20]}.")
            y.append(index[name] if name is not None else -1)
        return ids, torch.tensor(y, dtype=torch.long)

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
                texts, _ = read_text_file(
                    path,
                    self.text_column,
                    None,
                    self.file_format,
                    encoding=self.encoding,
                    option="predict_file",
                )
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
        names = [canonical_label(name) for name in state_dict["label_names"]]
        if len(set(names)) != len(names) or None in names:
            raise ValueError(
                f"The checkpoint's label names {list(state_dict['label_names'])[:20]} are not distinct classes in "
                f"their canonical form ({names[:20]}: numbers in their shortest form, ends stripped); it was saved "
                "by a version that kept them apart. Train again from the files."
            )
        self.label_names = names
        self._datasets = {}
