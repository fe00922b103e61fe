"""The bad-input catalogue: every entry is a user mistake and the exact error it gets.

``tests/test_bad_inputs.py`` runs each entry; ``python -m tests.bad_input_catalogue`` regenerates
``docs/bad-inputs.md`` from the messages the code really raises (a test checks the page is current).
Entries are ``(area, what the user did, code, exception type)``; the code runs in :func:`namespace`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

CATALOGUE: list[tuple[str, str, str, str]] = [
    # ------------------------------------------------------------------------------------ data
    ("data", "unknown dataset name", "ImageClassificationDataModule('imagenet')", "ValueError"),
    (
        "data",
        "MNIST missing with download=False",
        "ImageClassificationDataModule('mnist', data_dir=EMPTY).setup('fit')",
        "FileNotFoundError",
    ),
    (
        "data",
        "empty image folder",
        "ImageClassificationDataModule(image_folder=EMPTY).setup('fit')",
        "ValueError",
    ),
    (
        "data",
        "validation split outside (0, 1)",
        "ImageClassificationDataModule('digits', val_split=1.5)",
        "ValueError",
    ),
    ("data", "batch size 0", "ImageClassificationDataModule('digits', batch_size=0)", "ValueError"),
    ("data", "negative num_workers", "ImageClassificationDataModule('digits', num_workers=-1)", "ValueError"),
    (
        "data",
        "unknown normalization",
        "ImageClassificationDataModule('digits', normalization='l2')",
        "ValueError",
    ),
    (
        "data",
        "unknown augmentation preset",
        "ImageClassificationDataModule('digits', augmentation='extreme')",
        "ValueError",
    ),
    (
        "data",
        "unknown augmentation step",
        "ImageClassificationDataModule('digits', augmentation=[{'name': 'twirl'}])",
        "ValueError",
    ),
    ("data", "unknown channels", "ImageClassificationDataModule('digits', channels=2)", "ValueError"),
    (
        "data",
        "channels for a feature table",
        "ImageClassificationDataModule(images=torch.rand(8, 4), labels=torch.arange(8) % 2, channels=3)",
        "ValueError",
    ),
    (
        "data",
        "channels for RGBA images",
        "ImageClassificationDataModule(image_folder=RGBA_FOLDER, image_mode='RGBA', channels=3)",
        "ValueError",
    ),
    (
        "data",
        "checkpoint statistics of another channel count",
        "ImageClassificationDataModule('digits').load_state_dict({'normalization': 'zscore', "
        "'norm_stats': {'mean': torch.zeros(3), 'std': torch.ones(3)}})",
        "ValueError",
    ),
    (
        "data",
        "text file without the label column",
        "TextClassificationDataModule(train_file=NO_LABEL_CSV)",
        "ValueError",
    ),
    (
        "data",
        "text validation split outside (0, 1)",
        "TextClassificationDataModule(train_file=GOOD_CSV, val_split=0)",
        "ValueError",
    ),
    # ------------------------------------------------------------------------------------ modules, layers, models
    (
        "module",
        "unknown optimizer name",
        "ClassificationModule(LeNet300100(), optimizer='adamax')",
        "ValueError",
    ),
    ("module", "negative L1 coefficient", "ClassificationModule(LeNet300100(), l1=-0.1)", "ValueError"),
    (
        "module",
        "label smoothing of 1",
        "ClassificationModule(LeNet300100(), label_smoothing=1.0)",
        "ValueError",
    ),
    (
        "module",
        "unknown scheduler interval",
        "ClassificationModule(LeNet300100(), scheduler_interval='hour')",
        "ValueError",
    ),
    ("module", "learning rate 0", "ClassificationModule(LeNet300100(), lr=0)", "ValueError"),
    ("module", "learning rate NaN", "ClassificationModule(LeNet300100(), lr=float('nan'))", "ValueError"),
    (
        "module",
        "an RGB network on grey images (dry run at setup)",
        "train(resnet18(num_classes=10))",
        "ValueError",
    ),
    (
        "module",
        "images too small for the network (dry run at setup)",
        "train(LeNet5())",
        "ValueError",
    ),
    (
        "module",
        "a network built for another image size (dry run at setup)",
        "train(ConvNet3(image_size=28))",
        "ValueError",
    ),
    (
        "module",
        "another number of outputs than classes (dry run at setup)",
        "train(torch.nn.Sequential(torch.nn.Conv2d(1, 5, 8), torch.nn.Flatten()), num_classes=10)",
        "ValueError",
    ),
    (
        "module",
        "any other error of the network on the example batch",
        "train(TakesTwoInputs())",
        "TypeError",
    ),
    ("models", "unknown LeNet-5 variant", "LeNet5(variant='alexnet')", "ValueError"),
    ("models", "unknown zoo model", "create_model('resnet50')", "ValueError"),
    ("layers", "unknown norm", "create_norm('spectral', 8)", "ValueError"),
    ("layers", "unknown activation", "create_act('swish2')", "ValueError"),
    # ------------------------------------------------------------------------------------ callbacks
    ("LRScheduling", "unknown schedule name", "LRScheduling(schedule='zigzag')", "ValueError"),
    ("LRScheduling", "unknown interval", "LRScheduling(interval='hour')", "ValueError"),
    ("LRScheduling", "unknown warm-up mode", "LRScheduling(warmup_mode='cubic')", "ValueError"),
    ("LRScheduling", "negative base LR", "LRScheduling(base_lr=-1.0)", "ValueError"),
    (
        "LRScheduling",
        "plateau on a metric that is never logged",
        "fit(LRScheduling(schedule=ReduceOnPlateau(monitor='val_nope')))",
        "Exception",
    ),
    ("EarlyStopping", "unknown mode", "EarlyStopping(monitor='val_loss', mode='average')", "ValueError"),
    (
        "EarlyStopping",
        "unknown min_delta mode",
        "EarlyStopping(monitor='val_loss', min_delta_mode='percent')",
        "ValueError",
    ),
    (
        "EarlyStopping",
        "unknown best-weights source",
        "EarlyStopping(monitor='val_loss', restore_best_weights=True, best_weights_source='disk')",
        "ValueError",
    ),
    (
        "EarlyStopping",
        "negative start epoch",
        "EarlyStopping(monitor='val_loss', start_epoch=-2)",
        "ValueError",
    ),
    ("ProgressivePruning", "sparsity of 1", "ProgressivePruning(final_sparsity=1.0)", "ValueError"),
    ("ProgressivePruning", "end before start", "ProgressivePruning(start=5, end=2)", "ValueError"),
    ("ProgressivePruning", "unknown granularity", "ProgressivePruning(granularity='layers')", "ValueError"),
    ("ProgressivePruning", "unknown importance", "ProgressivePruning(importance='l3')", "ValueError"),
    ("ProgressivePruning", "unknown scope", "ProgressivePruning(scope='world')", "ValueError"),
    ("ProgressivePruning", "unknown schedule", "ProgressivePruning(schedule='quartic')", "ValueError"),
    (
        "ProgressivePruning",
        "no module matched",
        "fit(ProgressivePruning(include=['nothing_here.*']))",
        "ValueError",
    ),
    (
        "ProgressivePruning",
        "channel groups on a network torch.fx cannot trace",
        "fit(ProgressivePruning(granularity='channel_groups'), model=DataDependent())",
        "RuntimeError",
    ),
    (
        "weights",
        "a pruned checkpoint of a layer whose size cannot change",
        "resize_to_state_dict(torch.nn.Embedding(10, 4), {'weight': torch.zeros(10, 2)})",
        "ValueError",
    ),
    (
        "QuantizationAwareTraining",
        "unsupported backend",
        "QuantizationAwareTraining(backend='tpu')",
        "ValueError",
    ),
    (
        "QuantizationAwareTraining",
        "negative start epoch",
        "QuantizationAwareTraining(start_epoch=-1)",
        "ValueError",
    ),
    (
        "PostTrainingQuantization",
        "a model no quantization stack can capture (the dry run at setup)",
        "fit(PostTrainingQuantization(), model=DataDependent())",
        "ValueError",
    ),
    (
        "QuantizationAwareTraining",
        "start epoch after max_epochs",
        "fit(QuantizationAwareTraining(start_epoch=5), max_epochs=1)",
        "Exception",
    ),
    (
        "QuantizationAwareTraining",
        "unknown export format",
        "QuantizationAwareTraining(export_format='tflite')",
        "ValueError",
    ),
    (
        "QuantizationAwareTraining",
        "a format the chosen stack does not write",
        "QuantizationAwareTraining(backend='eager', export_format='onnx')",
        "ValueError",
    ),
    (
        "QuantizationAwareTraining",
        "formats no single stack writes",
        "QuantizationAwareTraining(export_format=['pt2', 'artifact'])",
        "ValueError",
    ),
    (
        "PostTrainingQuantization",
        "no calibration batches",
        "PostTrainingQuantization(calibration_batches=0)",
        "ValueError",
    ),
    (
        "PostTrainingQuantization",
        "unknown calibration split",
        "PostTrainingQuantization(calibration_split='holdout')",
        "ValueError",
    ),
    (
        "KnowledgeDistillation",
        "temperature 0",
        "KnowledgeDistillation(teacher=LeNet300100(), temperature=0)",
        "ValueError",
    ),
    (
        "KnowledgeDistillation",
        "alpha outside [0, 1]",
        "KnowledgeDistillation(teacher=LeNet300100(), alpha=1.5)",
        "ValueError",
    ),
    (
        "KnowledgeDistillation",
        "unknown feature loss",
        "KnowledgeDistillation(teacher=LeNet300100(), feature_loss='l7')",
        "ValueError",
    ),
    (
        "KnowledgeDistillation",
        "missing teacher checkpoint",
        "KnowledgeDistillation(teacher=LeNet300100(), teacher_checkpoint='/nonexistent.ckpt')",
        "FileNotFoundError",
    ),
    (
        "KnowledgeDistillation",
        "teacher checkpoint that is a folder",
        "KnowledgeDistillation(teacher=LeNet300100(), teacher_checkpoint=EMPTY)",
        "ValueError",
    ),
    (
        "KnowledgeDistillation",
        "teacher with other classes than the student",
        "fit(KnowledgeDistillation(teacher=LeNet300100(in_features=64, num_classes=5)))",
        "Exception",
    ),
    (
        "KnowledgeDistillation",
        "unknown layer for feature matching",
        "fit(KnowledgeDistillation(teacher=LeNet300100(in_features=64), feature_pairs={'nope': 'fc1'}))",
        "Exception",
    ),
    (
        "LogitEnsemble",
        "ensemble teacher with fewer checkpoints than members",
        "LogitEnsemble([LeNet300100(), LeNet300100()], checkpoints=['runs/t0.ckpt'])",
        "ValueError",
    ),
    (
        "LogitEnsemble",
        "ensemble member checkpoint missing",
        "LogitEnsemble([LeNet300100()], checkpoints=['/nonexistent/t0.ckpt'])",
        "FileNotFoundError",
    ),
    (
        "NonFiniteGuard",
        "negative check interval",
        "NonFiniteGuard(check_weights_every_n_steps=-1)",
        "ValueError",
    ),
    # ------------------------------------------------------------------------------------ CLI
    (
        "CLI",
        "unknown callback class in a recipe",
        "cli(['fit', '--trainer.callbacks+=NoSuchCallback'])",
        "SystemExit",
    ),
    ("CLI", "unknown model class in a recipe", "cli(['fit', '--model.model=NoSuchNet'])", "SystemExit"),
]

#: the catalogue's parts by topic (``tests/catalogue/<part>.py``): each has ``ENTRIES`` (rows as above), optional
#: ``MUST_NAME`` and an optional ``fixtures(tmp: Path) -> dict`` adding names (files it writes under ``tmp``)
PARTS: tuple[str, ...] = ("labels", "data_files", "loaders", "settings", "faults", "weight_sharing")


def _parts() -> list:
    import importlib

    return [importlib.import_module(f"tests.catalogue.{name}") for name in PARTS]


for _part in _parts():
    CATALOGUE.extend(_part.ENTRIES)

#: what the message must name, where the call's own option names and values are not it
MUST_NAME: dict[str, str] = {
    "channels for RGBA images": "`image_mode` 'RGBA'",
    "checkpoint statistics of another channel count": "`channels`",
    "an RGB network on grey images (dry run at setup)": "`data.init_args.channels: 3`",
    "images too small for the network (dry run at setup)": "`data.init_args.image_size: 28`",
    "a network built for another image size (dry run at setup)": "`image_size`",
    "another number of outputs than classes (dry run at setup)": "`num_classes`",
    "any other error of the network on the example batch": "dry run",
    "text file without the label column": "label_column",
    "unknown callback class in a recipe": "NoSuchCallback",
    "unknown model class in a recipe": "NoSuchNet",
}
for _part in _parts():
    MUST_NAME.update(getattr(_part, "MUST_NAME", {}))


def _tiny_png() -> bytes:
    """A 2x2 RGBA PNG (an image folder's only file)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (2, 2), (10, 20, 30, 255)).save(out, format="PNG")
    return out.getvalue()


def namespace() -> dict:
    """Names the catalogue's code may use (imports, temp files, a tiny ``fit`` and a ``cli`` runner)."""
    import contextlib
    import io

    import lightning.pytorch as pl
    import torch
    from torchvision.models import resnet18

    import lightning_optim.callbacks as callbacks
    import lightning_optim.data as data
    import lightning_optim.layers as layers
    import lightning_optim.models as models
    from lightning_optim.cli import build_cli
    from lightning_optim.functional.lr_scheduling.schedules import ReduceOnPlateau
    from lightning_optim.modules import ClassificationModule
    from lightning_optim.weights import resize_to_state_dict
    from tests.conftest import quiet_trainer_kwargs

    exported = {}
    for package in (callbacks, data, layers, models):
        exported.update({name: getattr(package, name) for name in package.__all__})
    LeNet300100 = models.LeNet300100
    ImageClassificationDataModule = data.ImageClassificationDataModule

    tmp = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    (tmp / "empty").mkdir()
    (tmp / "no_label.csv").write_text("text,category\nhello world,1\nbye,0\n")
    (tmp / "good.csv").write_text("text,label\nhello world,1\nbye,0\nhi there,1\nso long,0\n")
    (tmp / "rgba" / "a").mkdir(parents=True)
    (tmp / "rgba" / "a" / "x.png").write_bytes(_tiny_png())

    class DataDependent(torch.nn.Module):
        """A forward with control flow on tensor values: torch.fx cannot trace it."""

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            x = torch.flatten(x, 1)
            return self.fc(x) if x.sum() > 0 else self.fc(-x)

    class TakesTwoInputs(torch.nn.Module):
        """A network whose forward wants a second argument: it fails on any batch."""

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x, mask):
            return self.fc(torch.flatten(x, 1) * mask)

    def train(network, num_classes=None, **data_kwargs):
        """Fit ``network`` one step on the digits: a dry run at setup checks it against the data first."""
        module = ClassificationModule(network, num_classes=num_classes)
        trainer = pl.Trainer(**quiet_trainer_kwargs(tmp, limit_train_batches=1, limit_val_batches=1))
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=16, **data_kwargs))

    def fit(callback, max_epochs: int = 1, model=None):
        pl.seed_everything(0)
        module = ClassificationModule(model if model is not None else LeNet300100(in_features=64), lr=1e-3)
        trainer = pl.Trainer(
            callbacks=[callback],
            **quiet_trainer_kwargs(tmp, max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1),
        )
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=16))

    def cli(args):
        base = [
            "--model=ClassificationModule",
            "--model.model=LeNet300100",
            "--model.model.in_features=64",
            "--data=ImageClassificationDataModule",
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
        ]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                build_cli([args[0], *base, *args[1:]], run=False)
        except SystemExit as exit_:
            text = " ".join(stderr.getvalue().split())
            text = text[text.find("error:") :] if "error:" in text else text
            raise SystemExit(f"exit {exit_.code}: {text}") from None

    extra: dict = {}
    for part in _parts():
        if hasattr(part, "fixtures"):
            extra.update(part.fixtures(tmp))
    return {
        **extra,
        **exported,
        "ReduceOnPlateau": ReduceOnPlateau,
        "train": train,
        "resnet18": resnet18,
        "TakesTwoInputs": TakesTwoInputs,
        "RGBA_FOLDER": str(tmp / "rgba"),
        "ClassificationModule": ClassificationModule,
        "fit": fit,
        "cli": cli,
        "torch": torch,
        "DataDependent": DataDependent,
        "resize_to_state_dict": resize_to_state_dict,
        "EMPTY": str(tmp / "empty"),
        "NO_LABEL_CSV": str(tmp / "no_label.csv"),
        "GOOD_CSV": str(tmp / "good.csv"),
    }


def run_entry(code: str, ns: dict) -> BaseException | None:
    """Run one entry's code; return the exception it raised (``None`` if it raised nothing)."""
    try:
        eval(code, ns)  # noqa: S307 - the catalogue's own code
    except BaseException as err:  # noqa: BLE001 - SystemExit from the CLI included
        return err
    return None


def rendered_with() -> str:
    """The versions whose wording the CLI rows show (jsonargparse writes those messages)."""
    from importlib.metadata import version

    return f"Rendered with jsonargparse {version('jsonargparse')} and lightning {version('lightning')}."


def render_markdown() -> str:
    """The docs page: one row per bad input with the exact message."""
    import warnings

    warnings.simplefilter("ignore")
    ns = namespace()
    lines = [
        "# Bad inputs and the errors they get",
        "",
        "Generated by `python -m tests.bad_input_catalogue` from `tests/bad_input_catalogue.py`; every row is",
        "a test (`tests/test_bad_inputs.py`), so the message shown is the one a user sees. Temporary paths",
        "are shown as `<tmp>`.",
        "",
        f"{len(CATALOGUE)} bad inputs. {rendered_with()}",
        "",
        "| area | bad input | call | error |",
        "|---|---|---|---|",
    ]
    tmp_root = str(Path(ns["EMPTY"]).parent)
    for area, what, code, _ in CATALOGUE:
        err = run_entry(code, ns)
        message = f"{type(err).__name__}: {err}" if err is not None else "(no error)"
        message = " ".join(message.replace(tmp_root, "<tmp>").split())
        if len(message) > 400:
            message = message[:400] + " ..."
        cell = message.replace("|", "\\|")
        call = code.replace("|", "\\|")
        lines.append(f"| {area} | {what} | `{call}` | {cell} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
    target.write_text(render_markdown())
    print(f"wrote {target}")
