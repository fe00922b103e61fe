"""Bad-input catalogue part: loaders (rows as in ``tests/bad_input_catalogue.py``).

Files that loaders must refuse without reading them whole, allocating what they declare or blocking: hostile or
damaged ``.lopt`` artifacts, paths that are not regular files, YAML configs over the limits of
``lightning_optim.yaml_limits``, and checkpoint folders the command cannot resume from (half a sharded
checkpoint; a sharded one under a strategy that reads single files). The helpers that write the hostile artifacts are used by the artifact tests too.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import zlib
from pathlib import Path

ENTRIES: list[tuple[str, str, str, str]] = [
    ("loaders", "a .lopt holding an LZMA bomb", "load_artifact(BOMB_LOPT)", "ValueError"),
    ("loaders", "a tiny .lopt declaring a 12 GB tensor", "load_artifact(HUGE_TENSOR_LOPT)", "ValueError"),
    ("loaders", "a truncated .lopt", "load_artifact(TRUNCATED_LOPT)", "ValueError"),
    ("loaders", "a .lopt with one bit flipped in a stream", "load_artifact(BIT_FLIPPED_LOPT)", "ValueError"),
    (
        "loaders",
        "a .lopt with one bit flipped in its header",
        "load_artifact(HEADER_FLIPPED_LOPT)",
        "ValueError",
    ),
    ("loaders", "a .lopt with bytes appended", "load_artifact(APPENDED_LOPT)", "ValueError"),
    ("loaders", "an empty .lopt", "load_artifact(EMPTY_LOPT)", "ValueError"),
    ("loaders", "a zip file given as a .lopt", "load_artifact(ZIP_AS_LOPT)", "ValueError"),
    ("loaders", "a FIFO given as the artifact", "load_artifact(FIFO)", "ValueError"),
    ("loaders", "a folder given as the artifact", "describe_artifact(EMPTY)", "ValueError"),
    (
        "loaders",
        "an artifact larger than max_unpacked_bytes",
        "load_artifact(GOOD_LOPT, max_unpacked_bytes=64)",
        "ValueError",
    ),
    ("loaders", "max_unpacked_bytes of 0", "read_header(GOOD_LOPT, max_unpacked_bytes=0)", "ValueError"),
    (
        "loaders",
        "a FIFO as the teacher checkpoint",
        "KnowledgeDistillation(teacher=LeNet300100(), teacher_checkpoint=FIFO)",
        "ValueError",
    ),
    ("loaders", "a FIFO as the checkpoint to warm-start from", "fit(WarmStart(FIFO))", "ValueError"),
    (
        "loaders",
        "a YAML config whose nested aliases expand to 10^9 values",
        "install_yaml_limits() or cli(['fit', '--config', LAUGHS_YAML])",
        "SystemExit",
    ),
    (
        "loaders",
        "a YAML config with a !!python tag",
        "install_yaml_limits() or cli(['fit', '--config', PYTHON_TAG_YAML])",
        "SystemExit",
    ),
    (
        "loaders",
        "a YAML config of 2 MB",
        "install_yaml_limits() or cli(['fit', '--config', OVERSIZE_YAML])",
        "SystemExit",
    ),
    (
        "loaders",
        "a YAML config with a recursive alias",
        "install_yaml_limits() or cli(['fit', '--config', RECURSIVE_YAML])",
        "SystemExit",
    ),
    (
        "loaders",
        "a FIFO given as the --config file",
        "guard_cli(['fit', '--config', FIFO]) or cli(['fit', '--config', FIFO])",
        "ValueError",
    ),
    (
        "loaders",
        "a folder with meta.pt but no .metadata (not a sharded checkpoint) as --ckpt_path",
        "fit_cli_ckpt(['--ckpt_path', HALF_SHARDED_CKPT])",
        "ValueError",
    ),
    (
        "loaders",
        "a sharded checkpoint folder as --ckpt_path of a single-device run",
        "fit_cli_ckpt(['--ckpt_path', SHARDED_CKPT])",
        "ValueError",
    ),
]

MUST_NAME: dict[str, str] = {
    "a .lopt holding an LZMA bomb": "more than the declared 16 bytes",
    "a tiny .lopt declaring a 12 GB tensor": "12,000,000,000 bytes",
    "a truncated .lopt": "truncated",
    "a .lopt with one bit flipped in a stream": "CRC-32",
    "a .lopt with one bit flipped in its header": "header",
    "a .lopt with bytes appended": "unexpected bytes",
    "an empty .lopt": "empty",
    "a zip file given as a .lopt": "not a lightning-optim compact artifact",
    "a FIFO given as the artifact": "not a regular file",
    "a folder given as the artifact": "is a folder",
    "an artifact larger than max_unpacked_bytes": "`max_unpacked_bytes`",
    "max_unpacked_bytes of 0": "`max_unpacked_bytes`",
    "a FIFO as the teacher checkpoint": "`teacher_checkpoint`",
    "a FIFO as the checkpoint to warm-start from": "not a regular file",
    "a YAML config whose nested aliases expand to 10^9 values": "aliases add",
    "a YAML config with a !!python tag": "!!python/object/apply:os.system",
    "a YAML config of 2 MB": "more than the 1,048,576",
    "a YAML config with a recursive alias": "recursive",
    "a FIFO given as the --config file": "`--config`",
    "a folder with meta.pt but no .metadata (not a sharded checkpoint) as --ckpt_path": "or a sharded checkpoint folder",
    "a sharded checkpoint folder as --ckpt_path of a single-device run": "python -m lightning_optim.checkpoints consolidate",
}


# ------------------------------------------------------------------------------------- hostile artifacts
def craft_artifact(
    entries: list,
    raw_streams: dict[str, bytes] | None = None,
    kind: str = "state_dict",
    header_crc: bool = True,
    payload: bytes | None = None,
    **fields,
) -> bytes:
    """A ``.lopt`` written by hand: ``entries`` as in the header, ``raw_streams`` compressed as the packer does
    them; ``fields`` replace header fields (``streams=[[name, clen, rlen]]`` declares other sizes than the real
    ones) and ``payload`` the bytes after the header. With ``header_crc=False`` the header is as the packer
    wrote it before headers had a CRC-32."""
    from lightning_optim.functional import artifact as A

    raw_streams = raw_streams or {}
    compressed = {
        name: A._compress(A._shuffle(data, int(name[1:]) if name.startswith("v") else 1))
        for name, data in raw_streams.items()
    }
    header = {
        "format": A.KIND_VERSIONS.get(kind, 1),
        "kind": kind,
        "entries": entries,
        "streams": [[name, len(compressed[name]), len(raw_streams[name])] for name in raw_streams],
        "crc32": {name: zlib.crc32(c) for name, c in compressed.items()},
        "metadata": {},
        **fields,
    }
    if header_crc:
        header["header_crc32"] = zlib.crc32(A._header_json(header))
    header_bytes = A._compress(json.dumps(header, separators=(",", ":")).encode())
    body = payload if payload is not None else b"".join(compressed.values())
    return A.MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + body


def lzma_bomb(megabytes: int) -> bytes:
    """A raw LZMA2 stream of ``megabytes`` MiB of zeros, about 225 bytes per MiB: one compressed MiB repeated
    (each copy starts with a dictionary reset, so the copies join into one valid stream)."""
    from lightning_optim.functional import artifact as A

    one = lzma.compress(bytes(2**20), format=lzma.FORMAT_RAW, filters=A._LZMA_FILTERS)
    return one[:-1] * megabytes + b"\x00"  # the last byte of each is LZMA2's end marker


def lzma_bomb_artifact(megabytes: int = 64, declared: int = 16) -> bytes:
    """A ``.lopt`` whose one stream decompresses to ``megabytes`` MiB while its header declares ``declared``
    bytes (CRC-32s right: only the sizes lie)."""
    stream = lzma_bomb(megabytes)
    entry = ["archive/data.pkl", {"enc": "raw", "values": 0, "len": declared}]
    return craft_artifact(
        [entry],
        streams=[["misc", len(stream), declared]],
        crc32={"misc": zlib.crc32(stream)},
        payload=stream,
    )


def huge_tensor_artifact(n_bytes: int = 12_000_000_000) -> bytes:
    """A tiny ``.lopt`` declaring one all-zero float32 tensor of ``n_bytes`` bytes (the format allows zeros to
    take no bytes at all)."""
    entry = ["archive/data/0", {"enc": "zeros", "itemsize": 4, "n": n_bytes // 4, "nnz": 0}]
    return craft_artifact([entry])


def good_artifact() -> bytes:
    """A real, small state-dict artifact (a pruned linear layer and its bias)."""
    import torch

    from lightning_optim.functional.artifact import pack_artifact

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16)
    with torch.no_grad():
        layer.weight.mul_(layer.weight.abs() > 0.1)
    return pack_artifact(layer.state_dict())


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    """The classic: ``width`` strings, each next anchor ``width`` aliases of the previous, ``levels`` deep."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def fixtures(tmp: Path) -> dict:
    """The hostile files (under ``tmp/loaders``) and the loader functions the entries call."""
    from lightning_optim.functional.artifact import describe_artifact, load_artifact, read_header
    from lightning_optim.yaml_limits import guard_cli, install

    folder = tmp / "loaders"
    folder.mkdir(exist_ok=True)
    good = good_artifact()
    header_end = 12 + struct.unpack("<I", good[8:12])[0]
    flipped, header_flipped = bytearray(good), bytearray(good)
    flipped[-5] ^= 0x04
    header_flipped[header_end - 3] ^= 0x10
    files = {
        "GOOD_LOPT": good,
        "BOMB_LOPT": lzma_bomb_artifact(),
        "HUGE_TENSOR_LOPT": huge_tensor_artifact(),
        "TRUNCATED_LOPT": good[: len(good) // 2],
        "BIT_FLIPPED_LOPT": bytes(flipped),
        "HEADER_FLIPPED_LOPT": bytes(header_flipped),
        "APPENDED_LOPT": good + b"\n",
        "EMPTY_LOPT": b"",
        "ZIP_AS_LOPT": b"PK\x03\x04" + bytes(60),
    }
    names: dict = {}
    for name, data in files.items():
        path = folder / f"{name.lower()}.lopt"
        path.write_bytes(data)
        names[name] = str(path)
    fifo = folder / "pipe.lopt"
    if not fifo.exists():
        os.mkfifo(fifo)
    names["FIFO"] = str(fifo)
    yamls = {
        "LAUGHS_YAML": billion_laughs() + "trainer:\n  max_epochs: *l8\n",
        "PYTHON_TAG_YAML": "trainer:\n  max_epochs: !!python/object/apply:os.system ['true']\n",
        "OVERSIZE_YAML": "trainer:\n  max_epochs: 1\n" + "# padding\n" * 220_000,
        "RECURSIVE_YAML": "trainer:\n  callbacks: &loop [*loop]\n",
    }
    for name, text in yamls.items():
        path = folder / f"{name.lower()}.yaml"
        path.write_text(text)
        names[name] = str(path)
    names.update(_checkpoint_folders(folder))
    return {
        **names,
        "load_artifact": load_artifact,
        "read_header": read_header,
        "describe_artifact": describe_artifact,
        "install_yaml_limits": install,
        "guard_cli": guard_cli,
        "fit_cli_ckpt": _fit_cli_ckpt(folder),
    }


def _checkpoint_folders(folder: Path) -> dict[str, str]:
    """``SHARDED_CKPT``: a folder the CLI takes for a sharded checkpoint (``meta.pt`` and ``.metadata``, which it
    reads neither of); ``HALF_SHARDED_CKPT``: ``meta.pt`` alone, no sharded checkpoint."""
    import torch

    names = {}
    for name, files in (("SHARDED_CKPT", ("meta.pt", ".metadata")), ("HALF_SHARDED_CKPT", ("meta.pt",))):
        path = folder / f"{name.lower()}.ckpt"
        path.mkdir(exist_ok=True)
        for file in files:
            if file == "meta.pt":
                torch.save({"epoch": 0, "global_step": 1}, path / file)
            else:
                (path / file).write_bytes(b"")
        names[name] = str(path)
    return names


def _fit_cli_ckpt(folder: Path):
    def fit_cli_ckpt(args: list[str]) -> None:
        """``lightning-optim fit`` on the digits, one step on one device, with ``args`` (a ckpt_path is checked
        at parse time, and against the strategy before the run starts)."""
        import contextlib
        import io

        from lightning_optim.cli import build_cli

        base = [
            "fit",
            "--model=ClassificationModule",
            "--model.model=LeNet300100",
            "--model.model.in_features=64",
            "--data=ImageClassificationDataModule",
            "--data.dataset=digits",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={folder / 'cli'}",
            "--test_after_fit=false",
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            build_cli([*base, *args])

    return fit_cli_ckpt
