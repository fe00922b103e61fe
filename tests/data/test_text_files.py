"""CSV/TSV/JSONL files read as they say or refused with the file and line: field counts, duplicated columns,
encodings, canonical labels, too few rows, and only our errors for any bytes."""

from __future__ import annotations

import os
import random

import pytest

from lightning_optim.data import TextClassificationDataModule
from lightning_optim.data.text_datamodule import read_text_file


def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return str(path)


def test_a_row_with_an_extra_field_is_refused_not_a_new_class(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\ngood film,1\nbad, boring film,0\nfine,1\n")
    with pytest.raises(
        ValueError,
        match=r"t.csv' line 3 has 3 field\(s\), the header has 2 \(\['text', 'label'\]\): a field holding the delimiter ',' must be quoted",
    ):
        read_text_file(path, "text", "label")
    with pytest.raises(ValueError, match="line 3 has 3 field"):
        TextClassificationDataModule(path).setup("fit")
    tsv = write(tmp_path, "t.tsv", "text\tlabel\na\t1\nb\t1\textra\n")
    with pytest.raises(ValueError, match=r"line 3 has 3 field\(s\).*delimiter '\\t'"):
        read_text_file(tsv, "text", "label")
    short = write(tmp_path, "s.csv", "text,label\nhello\n")
    with pytest.raises(ValueError, match=r"line 2 has 1 field\(s\).*an empty one for a missing label"):
        read_text_file(short, "text", "label")
    quoted = write(tmp_path, "q.csv", 'text,label\n"bad, boring film",0\n"multi\nline",1\n')
    assert read_text_file(quoted, "text", "label") == (["bad, boring film", "multi\nline"], ["0", "1"])


def test_the_text_column_cannot_be_the_label_column(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\na,1\nb,0\n")
    with pytest.raises(ValueError, match=r"`text_column` and `label_column` are both 'label'"):
        TextClassificationDataModule(path, text_column="label")
    with pytest.raises(ValueError, match="are both 'text'"):
        read_text_file(path, "text", "text")


def test_a_duplicated_header_name_is_refused_naming_it(tmp_path):
    path = write(tmp_path, "t.csv", "text,label,label\na,1,0\n")
    with pytest.raises(ValueError, match=r"the header names column 'label' twice \(columns 2 and 3\)"):
        TextClassificationDataModule(path)  # at construction, from the header
    with pytest.raises(ValueError, match="names column 'label' twice"):
        read_text_file(path, "text", "label")
    jsonl = write(tmp_path, "t.jsonl", '{"text": "a", "label": 1, "label": 0}\n')
    with pytest.raises(ValueError, match=r"line 1 names the key 'label' twice"):
        TextClassificationDataModule(jsonl)


def test_latin_1_bytes_name_the_file_and_the_encoding_option(tmp_path):
    content = "text,label\nun café noir,1\ndu thé,0\nde l'eau,1\n"
    path = write(tmp_path, "t.csv", content, encoding="latin-1")
    with pytest.raises(
        ValueError,
        match=r"`train_file` '.*t.csv' is not valid utf-8 text: byte\(s\) e9 on line 2.*`encoding: latin-1`",
    ):
        TextClassificationDataModule(path)
    dm = TextClassificationDataModule(path, encoding="latin-1", val_split=0.3)
    dm.setup("fit")
    assert dm.label_names == ["0", "1"]
    assert read_text_file(path, "text", "label", encoding="latin-1")[0][0] == "un café noir"
    late = write(tmp_path, "late.csv", "text,label\n" + "ok,1\n" * 5 + "café,0\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"`val_file` '.*late.csv' is not valid utf-8 text: .* on line 7"):
        TextClassificationDataModule(write(tmp_path, "u.csv", content), val_file=late)
    with pytest.raises(ValueError, match=r"Unknown `encoding` 'utf9'"):
        TextClassificationDataModule(path, encoding="utf9")
    with pytest.raises(ValueError, match=r"Unknown `encoding` 'rot13'"):
        TextClassificationDataModule(path, encoding="rot13")


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write(tmp_path, "t.csv", "\ufefftext,label\na,1\nb,0\n")
    assert read_text_file(path, "text", "label") == (["a", "b"], ["1", "0"])


def test_one_canonical_form_per_class(tmp_path):
    rows = "text,label\na,1\nb,1.0\nc, 1\nd,+1\ne,0\nf,0.0\ng,2.50\nh,2.5\n"
    path = write(tmp_path, "t.csv", rows)
    assert read_text_file(path, "text", "label")[1] == ["1", "1", "1", "1", "0", "0", "2.5", "2.5"]
    dm = TextClassificationDataModule(path, val_split=0.2)
    dm.setup("fit")
    assert dm.label_names == ["0", "1", "2.5"]  # "1" and "1.0" were two classes before
    jsonl = write(tmp_path, "v.jsonl", '{"text": "x", "label": 1.0}\n{"text": "y", "label": "0"}\n')
    with_val = TextClassificationDataModule(path, val_file=jsonl)
    with_val.setup("fit")  # 1.0 in JSON is the training class "1"
    assert with_val._dataset("val").labels.tolist() == [1, 0]
    assert with_val.encode([["x"]], ["1.00"])[1].tolist() == [1]


def test_nan_labels_are_refused_with_the_line(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\na,1\nb,NaN\n")
    with pytest.raises(ValueError, match=r"Label 'NaN' \('.*t.csv' line 3\) is not a class"):
        TextClassificationDataModule(path).setup("fit")


def test_jsonl_lines_must_be_objects(tmp_path):
    for content, message in (
        ("[1, 2]\n", r"line 1 is a JSON list, not an object"),
        ('{"text": "a", "label": 1}\n' + "[" * 100_000 + "\n", r"line 2 is not JSON"),
        ('{"text": ["a"], "label": 1}\n', r"The text \(.* line 1\) is a JSON list"),
        ('{"text": "a", "label": {"x": 1}}\n', r"is a dict; a label is a string or a number"),
    ):
        path = write(tmp_path, "t.jsonl", content)
        with pytest.raises(ValueError, match=message):
            read_text_file(path, "text", "label")


def test_files_too_small_to_split(tmp_path):
    one = write(tmp_path, "one.csv", "text,label\nhello,1\n")
    with pytest.raises(
        ValueError, match=r"Too few samples to split: `train_file` .* has 1 usable row .*or a `val_file`"
    ):
        TextClassificationDataModule(one).setup("fit")
    two = write(tmp_path, "two.csv", "text,label\nhello,1\nbye,0\n")
    empty_val = write(tmp_path, "val.csv", "text,label\n!!!,1\n")
    with pytest.raises(ValueError, match=r"`val_file` .* has no usable row"):
        TextClassificationDataModule(two, val_file=empty_val).setup("fit")
    with pytest.raises(
        ValueError, match=r"`train_file` '.*none.csv' is empty: a CSV file begins with a header row"
    ):
        TextClassificationDataModule(write(tmp_path, "none.csv", ""))


def test_paths_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"`train_file` '.*f.csv' is not a regular file \(a FIFO"):
        TextClassificationDataModule(str(fifo))
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        read_text_file(tmp_path / "d.csv", "text", "label")
    with pytest.raises(ValueError, match=r"has 15 bytes, more than the 10 .*`max_bytes`"):
        read_text_file(write(tmp_path, "big.csv", "text,label\na,1\n"), "text", "label", max_bytes=10)


def test_checkpoint_label_names_are_canonicalized(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\na,1\nb,0\nc,1\n")
    dm = TextClassificationDataModule(path, val_split=0.3)
    dm.load_state_dict({"vocab": ["<pad>", "<unk>", "a"], "label_names": ["0.0", "1.0"]})
    assert dm.label_names == ["0", "1"]
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"not distinct classes in their canonical form"):
        dm.load_state_dict({"vocab": ["<pad>", "<unk>"], "label_names": ["1", "1.0"]})


@pytest.mark.parametrize("ending", ["csv", "tsv", "jsonl"])
def test_random_and_mutated_bytes_give_only_our_errors(tmp_path, ending):
    """A short, seeded fuzz of the text reader: a result, a ValueError or nothing else."""
    rng = random.Random(ending)
    seeds = {
        "csv": b'text,label\n"a, b",1\nc,0\n',
        "tsv": b"text\tlabel\na\t1\n",
        "jsonl": b'{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n',
    }
    path = tmp_path / f"f.{ending}"
    alphabet = b'",\t\n\r{}[]:\\\x00\xe9\xff 0123456789abcNaN'
    for i in range(300):
        if i % 2:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        else:
            data = bytearray(seeds[ending])
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.choice(alphabet)
        path.write_bytes(bytes(data))
        for encoding in ("utf-8", "utf-16"):
            try:
                read_text_file(path, "text", "label", encoding=encoding)
            except ValueError:
                pass
