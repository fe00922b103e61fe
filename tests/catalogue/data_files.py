"""Bad-input catalogue part: data_files (rows as in ``tests/bad_input_catalogue.py``).

Data read wrong or refused without a word: IDX files checked against their header and bounds, one scaling
rule per image dtype, CSV/TSV/JSONL rows read as the header says, encodings named, augmentations checked on
the data's image size, all at construction or ``setup``.
"""

from __future__ import annotations

from pathlib import Path

ENTRIES: list[tuple[str, str, str, str]] = [
    (
        "data files",
        "a truncated MNIST image file",
        "ImageClassificationDataModule('mnist', data_dir=MNIST_TRUNCATED).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "an empty MNIST label file",
        "ImageClassificationDataModule('mnist', data_dir=MNIST_EMPTY_LABELS).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "an MNIST image file whose header says 14x56",
        "ImageClassificationDataModule('mnist', data_dir=MNIST_14X56).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "MNIST image and label files of different lengths",
        "ImageClassificationDataModule('mnist', data_dir=MNIST_COUNTS_DIFFER).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "a PNG saved under an MNIST file name",
        "ImageClassificationDataModule('fashionmnist', data_dir=FASHION_NOT_IDX).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "an IDX header declaring a 12 GB tensor",
        "read_idx(b'\\x00\\x00\\x0d\\x03' + (3000).to_bytes(4, 'big') + (1000).to_bytes(4, 'big') * 2)",
        "ValueError",
    ),
    (
        "data files",
        "a gzip IDX file that decompresses beyond the bound",
        "read_idx(IDX_GZIP_BOMB, max_bytes=1_000_000)",
        "ValueError",
    ),
    (
        "data files",
        "a FIFO given as an IDX file",
        "read_idx(FIFO_FILE)",
        "ValueError",
    ),
    (
        "data files",
        "int32 images holding 16-bit values",
        "ImageClassificationDataModule(images=torch.randint(0, 4096, (30, 1, 4, 4), dtype=torch.int32), "
        "labels=torch.arange(30) % 2)",
        "ValueError",
    ),
    (
        "data files",
        "complex-valued images",
        "ImageClassificationDataModule(images=torch.zeros(30, 1, 4, 4, dtype=torch.complex64), "
        "labels=torch.arange(30) % 2)",
        "ValueError",
    ),
    (
        "data files",
        "grey images without their channel axis",
        "ImageClassificationDataModule(images=torch.rand(30, 4, 4), labels=torch.arange(30) % 2)",
        "ValueError",
    ),
    (
        "data files",
        "a 32-bit integer TIFF with values above 255 in an image folder",
        "ImageClassificationDataModule(image_folder=INT32_TIFF_FOLDER, image_mode='L').setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "a crop larger than the images, per-sample augmentation",
        "ImageClassificationDataModule(images=torch.rand(30, 1, 8, 8), labels=torch.arange(30) % 2, "
        "augmentation=[{'name': 'crop', 'size': 12}], augmentation_mode='sample').setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "a CSV row with an unquoted comma in its text",
        "TextClassificationDataModule(EXTRA_FIELD_CSV).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "a CSV row without its label field",
        "TextClassificationDataModule(SHORT_ROW_CSV).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "a CSV header naming a column twice",
        "TextClassificationDataModule(DUPLICATE_HEADER_CSV)",
        "ValueError",
    ),
    (
        "data files",
        "the label column given as the text column",
        "TextClassificationDataModule(GOOD_CSV, text_column='label')",
        "ValueError",
    ),
    (
        "data files",
        "a latin-1 CSV read as UTF-8",
        "TextClassificationDataModule(LATIN1_CSV)",
        "ValueError",
    ),
    (
        "data files",
        "an unknown text encoding",
        "TextClassificationDataModule(GOOD_CSV, encoding='utf9')",
        "ValueError",
    ),
    (
        "data files",
        "a JSONL line that is a list",
        "TextClassificationDataModule(LIST_LINE_JSONL).setup('fit')",
        "ValueError",
    ),
    (
        "data files",
        "a JSONL record naming a key twice",
        "TextClassificationDataModule(DUPLICATE_KEY_JSONL)",
        "ValueError",
    ),
    (
        "data files",
        "an empty CSV file",
        "TextClassificationDataModule(EMPTY_CSV)",
        "ValueError",
    ),
    (
        "data files",
        "a folder given as the training file",
        "TextClassificationDataModule(FOLDER_CSV)",
        "ValueError",
    ),
]

MUST_NAME: dict[str, str] = {
    "a truncated MNIST image file": "t10k-images-idx3-ubyte' is truncated",
    "an empty MNIST label file": "t10k-labels-idx1-ubyte' is empty",
    "an MNIST image file whose header says 14x56": "40x14x56; MNIST images are Nx28x28",
    "MNIST image and label files of different lengths": "holds 20 images but",
    "a PNG saved under an MNIST file name": "is not an IDX file",
    "an IDX header declaring a 12 GB tensor": "`max_bytes`",
    "a gzip IDX file that decompresses beyond the bound": "decompresses to more than",
    "a FIFO given as an IDX file": "not a regular file",
    "int32 images holding 16-bit values": "images.to(torch.uint16)",
    "complex-valued images": "torch.complex64",
    "grey images without their channel axis": "`images.unsqueeze(1)`",
    "a 32-bit integer TIFF with values above 255 in an image folder": "PIL mode 'I'",
    "a crop larger than the images, per-sample augmentation": "`image_size`",
    "a CSV row with an unquoted comma in its text": "line 3 has 3 field(s), the header has 2",
    "a CSV row without its label field": "line 2 has 1 field(s)",
    "a CSV header naming a column twice": "names column 'label' twice",
    "the label column given as the text column": "`label_column`",
    "a latin-1 CSV read as UTF-8": "`encoding: latin-1`",
    "a JSONL line that is a list": "is a JSON list, not an object",
    "a JSONL record naming a key twice": "names the key 'text' twice",
    "an empty CSV file": "begins with a header row",
    "a folder given as the training file": "is a folder",
}


def fixtures(tmp: Path) -> dict:
    """The files the entries read, written under ``tmp``."""
    import gzip
    import io
    import os

    import numpy as np
    from PIL import Image

    from tests.data.idx_files import idx_bytes, write_mnist

    root = tmp / "data_files"
    root.mkdir(parents=True, exist_ok=True)
    names: dict = {}

    def mnist(name: str, folder: str = "MNIST") -> Path:
        names[name] = str(root / name.lower())
        return write_mnist(root / name.lower(), folder=folder)

    raw = mnist("MNIST_TRUNCATED")
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    raw = mnist("MNIST_EMPTY_LABELS")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")
    raw = mnist("MNIST_14X56")
    data = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(
        data[:8] + (14).to_bytes(4, "big") + (56).to_bytes(4, "big") + data[16:]
    )
    raw = mnist("MNIST_COUNTS_DIFFER")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    raw = mnist("FASHION_NOT_IDX", folder="FashionMNIST")
    png = io.BytesIO()
    Image.new("L", (28, 28)).save(png, format="PNG")
    (raw / "train-images-idx3-ubyte").write_bytes(png.getvalue())

    names["IDX_GZIP_BOMB"] = gzip.compress(
        b"\x00\x00\x08\x01" + (1 << 24).to_bytes(4, "big") + bytes(1 << 24)
    )
    fifo = root / "fifo-idx1-ubyte"
    if not fifo.exists():
        os.mkfifo(fifo)
    names["FIFO_FILE"] = str(fifo)
    tiff = root / "int32_tiff" / "a"
    tiff.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 4000, np.int32)).save(tiff / "x.tif")
    names["INT32_TIFF_FOLDER"] = str(root / "int32_tiff")

    texts: dict[str, bytes] = {
        "EXTRA_FIELD_CSV": b"text,label\ngood film,1\nbad, boring film,0\nfine,1\n",
        "SHORT_ROW_CSV": b"text,label\ngood film\nbad,0\n",
        "DUPLICATE_HEADER_CSV": b"text,label,label\ngood,1,0\n",
        "LATIN1_CSV": "text,label\nun café noir,1\ndu thé,0\n".encode("latin-1"),
        "LIST_LINE_JSONL": b'{"text": "good", "label": 1}\n["bad", 0]\n',
        "DUPLICATE_KEY_JSONL": b'{"text": "good", "text": "bad", "label": 1}\n',
        "EMPTY_CSV": b"",
    }
    for name, content in texts.items():
        ending = "jsonl" if name.endswith("JSONL") else "csv"
        path = root / f"{name.lower()}.{ending}"
        path.write_bytes(content)
        names[name] = str(path)
    (root / "folder.csv").mkdir(exist_ok=True)
    names["FOLDER_CSV"] = str(root / "folder.csv")
    return names
