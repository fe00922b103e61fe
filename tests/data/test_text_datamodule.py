"""TextClassificationDataModule over tiny CSV/JSONL files."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim.data import TextClassificationDataModule, Vocabulary
from lightning_optim.data.text_datamodule import read_text_file
from lightning_optim.models import TextClassifier
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs

ROWS = [
    ("A <b>great</b> movie, I loved it!", "pos"),
    ("Terrible plot and awful acting.", "neg"),
    ("Great fun: https://example.com loved the cast", "pos"),
    ("awful, boring, terrible", "neg"),
    ("Loved every minute", "pos"),
    ("boring and awful", "neg"),
    ("我爱这部电影", "pos"),
    ("Café scenes were great", "pos"),
    ("!!!", "neg"),  # empty after cleaning: dropped
    ("no label here", ""),  # missing label: dropped
]


def write_csv(path, rows, text="text", label="label", delimiter=","):
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow([text, label])
        writer.writerows(rows)
    return path


def write_jsonl(path, rows, text="text", label="label"):
    path.write_text(
        "\n".join(json.dumps({text: t, label: lbl}, ensure_ascii=False) for t, lbl in rows) + "\n", "utf-8"
    )
    return path


@pytest.fixture
def files(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    val = write_jsonl(tmp_path / "val.jsonl", [("unseenword great", "pos"), ("awful", "neg")])
    test = write_csv(
        tmp_path / "test.tsv", [("loved it", "pos"), ("terrible", "neg"), ("boring", "neg")], delimiter="\t"
    )
    return train, val, test


def test_vocabulary():
    vocab = Vocabulary.build([["a", "b", "a"], ["c", "a", "b"], ["d"]], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b"]
    assert vocab.encode(["a", "zzz", "b"], max_length=5) == [2, 1, 3, 0, 0]
    assert vocab.encode(["a", "b", "a"], max_length=2) == [2, 3]
    assert vocab.decode([2, 3, 0]) == ["a", "b"]
    assert len(Vocabulary.build([list("abcdef")], max_size=4)) == 4


def test_files_read_cleaned_encoded(files):
    train, val, test = files
    dm = TextClassificationDataModule(
        str(train), val_file=str(val), test_file=str(test), max_length=6, batch_size=4
    )
    assert dm.num_classes == 2 and dm.label_names == ["neg", "pos"]
    dm.setup("fit")
    assert dm.cleaning_report["train"] == {"rows": 10, "missing_label": 1, "empty_text": 1, "kept": 8}
    assert "我" in dm.vocab and "café" in dm.vocab and "great" in dm.vocab and "https" not in dm.vocab
    # the vocabulary comes from the training split only
    assert "unseenword" not in dm.vocab
    tokens, labels = dm._dataset("val").tokens, dm._dataset("val").labels
    assert tokens[0, 0].item() == Vocabulary.unk_id and labels.tolist() == [1, 0]
    batch_tokens, batch_labels = next(iter(dm.train_dataloader()))
    assert batch_tokens.dtype == torch.long and batch_tokens.shape[0] == 4 and batch_tokens.shape[1] <= 6
    assert (batch_tokens != 0).sum(1).max() == batch_tokens.shape[1]  # trimmed to the longest text
    assert next(iter(dm.test_dataloader()))[0].shape[0] == 3


def test_truncation_and_padding(tmp_path):
    path = write_csv(
        tmp_path / "t.csv", [("one two three four five", "a"), ("six", "b"), ("seven eight", "a")]
    )
    dm = TextClassificationDataModule(str(path), val_split=0.34, max_length=3, seed=0)
    ids, _ = dm.encode([["one", "two", "three", "four"], ["six"]], ["a", "b"])
    assert ids.shape == (2, 3) and ids[1, 1:].tolist() == [0, 0]
    assert dm.encode_texts(["One, TWO!"]).shape == (1, 3)


def test_configurable_columns_and_cleaning(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [("The cat sat", 1), ("The dog ran", 0), ("a cat", 1), ("a dog", 0)],
        "review",
        "stars",
    )
    dm = TextClassificationDataModule(
        str(path),
        text_column="review",
        label_column="stars",
        cleaning={"remove_stopwords": True},
        val_split=0.25,
    )
    dm.setup("fit")
    assert dm.label_names == ["0", "1"] and "the" not in dm.vocab and "a" not in dm.vocab


def test_seeded_split_and_vocab_from_train_only(tmp_path):
    rows = [(f"word{i} common", str(i % 2)) for i in range(20)]
    path = write_csv(tmp_path / "t.csv", rows)
    a = TextClassificationDataModule(str(path), val_split=0.25, seed=1)
    b = TextClassificationDataModule(str(path), val_split=0.25, seed=1)
    c = TextClassificationDataModule(str(path), val_split=0.25, seed=2)
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.vocab.itos == b.vocab.itos and a.vocab.itos != c.vocab.itos
    val_words = {t for toks, _ in [a._splits["val"]] for words in toks for t in words} - {"common"}
    assert len(val_words) == 5 and not any(w in a.vocab for w in val_words)


def test_bad_inputs_name_options(files, tmp_path):
    train, _, _ = files
    with pytest.raises(
        ValueError, match=r"`label_column` 'sentiment' is not a column .*columns found: \['text', 'label'\]"
    ):
        TextClassificationDataModule(str(train), label_column="sentiment")  # at construction
    with pytest.raises(ValueError, match=r"`text_column` 'body'"):
        TextClassificationDataModule(str(train), text_column="body")
    with pytest.raises(ValueError, match=r"`val_split` must be in \(0, 1\)"):
        TextClassificationDataModule(str(train), val_split=1.5)
    with pytest.raises(ValueError, match=r"`file_format` 'xml'; allowed: \['csv', 'tsv', 'jsonl'\]"):
        TextClassificationDataModule(str(train), file_format="xml")
    with pytest.raises(ValueError, match=r"Unknown `cleaning` option"):
        TextClassificationDataModule(str(train), cleaning={"stem": True})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextClassificationDataModule(str(tmp_path / "none.csv"))
    other = write_csv(tmp_path / "v.csv", [("great", "neutral")])
    with pytest.raises(ValueError, match=r"val labels \['neutral'\].*`label_column`"):
        TextClassificationDataModule(str(train), val_file=str(other)).setup("fit")
    jsonl = write_jsonl(tmp_path / "j.jsonl", [("hi", "pos")], text="body")
    with pytest.raises(
        ValueError, match=r"`text_column` 'text' is not a column .*columns found: \['body', 'label'\]"
    ):
        TextClassificationDataModule(str(train), test_file=str(jsonl))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="Cannot infer `file_format`"):
        read_text_file(tmp_path / "x.txt", "text", "label")


def test_fit_and_vocabulary_in_checkpoint(files, tmp_path):
    train, val, test = files
    dm = TextClassificationDataModule(
        str(train), val_file=str(val), test_file=str(test), batch_size=4, max_length=8
    )
    model = TextClassifier(vocab_size=dm.vocab_size, num_classes=dm.num_classes, embed_dim=8, hidden=8)
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(ClassificationModule(model, lr=1e-2), datamodule=dm)
    path = tmp_path / "text.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["TextClassificationDataModule"]
    assert state["vocab"] == dm.vocab.itos and state["label_names"] == ["neg", "pos"]
    restored = TextClassificationDataModule(
        str(train), val_split=0.5, test_file=str(test), max_length=8, seed=9
    )
    restored.load_state_dict(state)
    restored.setup("test")
    assert restored.vocab.itos == dm.vocab.itos
    trainer.test(ClassificationModule(model), datamodule=restored, verbose=False)


def test_predict_without_labels(files, tmp_path):
    train, _, _ = files
    predict = tmp_path / "predict.jsonl"
    predict.write_text('{"text": "great fun"}\n{"text": "!!!"}\n', encoding="utf-8")
    dm = TextClassificationDataModule(str(train), predict_file=str(predict), max_length=4, val_split=0.25)
    tokens, labels = next(iter(dm.predict_dataloader()))
    assert tokens.shape[0] == 2 and labels.tolist() == [
        -1,
        -1,
    ]  # every row kept, even one empty after cleaning
    assert tokens[1].tolist() == [0] * tokens.shape[1]
