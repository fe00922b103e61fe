"""LogitEnsemble: the mean of its members' logits, members' weights from checkpoints, YAML, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_optim.callbacks import KnowledgeDistillation
from lightning_optim.models import ConvNet3, LeNet300100, LogitEnsemble
from tests.test_cli import quiet_main, recipe, write


def _members(n: int = 3) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [LeNet300100(in_features=64, hidden=(16, 8)) for _ in range(n)]


def test_output_is_the_mean_of_the_members_logits_and_the_geometric_mean_of_their_distributions():
    members = _members()
    ensemble = LogitEnsemble(members)
    x = torch.randn(5, 1, 8, 8)
    logits = [m(x) for m in members]
    out = ensemble(x)
    torch.testing.assert_close(out, (logits[0] + logits[1] + logits[2]) / 3)
    for temperature in (1.0, 4.0, 20.0):
        geometric = torch.stack([F.softmax(z / temperature, -1) for z in logits]).log().mean(0).exp()
        torch.testing.assert_close(
            F.softmax(out / temperature, -1), geometric / geometric.sum(-1, keepdim=True)
        )
    assert ensemble.num_classes == 10
    assert sum(p.numel() for p in ensemble.parameters()) == 3 * sum(
        p.numel() for p in members[0].parameters()
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_probabilities_combine_gives_the_arithmetic_mean_at_its_temperature(temperature):
    members = _members()
    ensemble = LogitEnsemble(members, combine="probabilities", temperature=temperature)
    x = torch.randn(5, 1, 8, 8)
    arithmetic = torch.stack([F.softmax(m(x) / temperature, -1) for m in members]).mean(0)
    out = ensemble(x)
    torch.testing.assert_close(F.softmax(out / temperature, -1), arithmetic)
    assert torch.equal(out.argmax(-1), arithmetic.argmax(-1))
    # and differs from the logit mean (the geometric mean) wherever the members disagree
    assert not torch.allclose(F.softmax(LogitEnsemble(members)(x) / temperature, -1), arithmetic)


def test_distillation_warns_when_a_probability_ensemble_has_another_temperature():
    ensemble = LogitEnsemble(_members(2), combine="probabilities", temperature=4.0)
    with pytest.warns(
        UserWarning, match=r"averages probabilities at `temperature`=4, but distillation runs at"
    ):
        KnowledgeDistillation(ensemble, temperature=8.0)
    with pytest.warns(UserWarning, match="to `final_temperature`=1"):
        KnowledgeDistillation(ensemble, temperature=4.0, final_temperature=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KnowledgeDistillation(ensemble, temperature=4.0)
        KnowledgeDistillation(LogitEnsemble(_members(2)), temperature=8.0)


def test_members_load_their_checkpoints(tmp_path):
    trained = _members(2)
    paths = []
    for i, member in enumerate(trained):
        paths.append(tmp_path / f"m{i}.ckpt")
        # one Lightning-style checkpoint of our module, one plain state dict
        state = member.state_dict()
        torch.save(
            {"state_dict": {f"model.{k}": v for k, v in state.items()}} if i == 0 else state, paths[-1]
        )
    torch.manual_seed(1)
    fresh = [LeNet300100(in_features=64, hidden=(16, 8)) for _ in range(2)]
    ensemble = LogitEnsemble(fresh, checkpoints=[str(p) for p in paths])
    for loaded, original in zip(ensemble.members, trained):
        for a, b in zip(loaded.state_dict().values(), original.state_dict().values()):
            assert torch.equal(a, b)


def test_distillation_from_a_yaml_ensemble_teacher(tmp_path):
    members = []
    for i in range(2):
        torch.manual_seed(i)
        torch.save(ConvNet3(image_size=8).state_dict(), tmp_path / f"t{i}.pt")
        members.append({"class_path": "ConvNet3", "init_args": {"image_size": 8}})
    config = recipe(tmp_path)
    config["trainer"]["callbacks"] = [
        {
            "class_path": "KnowledgeDistillation",
            "init_args": {
                "teacher": {
                    "class_path": "LogitEnsemble",
                    "init_args": {
                        "members": members,
                        "checkpoints": [str(tmp_path / f"t{i}.pt") for i in range(2)],
                    },
                },
                "temperature": 4.0,
                "alpha": 0.5,
            },
        }
    ]
    cli = quiet_main(
        ["fit", "--config", str(write(tmp_path / "r.yaml", config)), "--test_after_fit", "false"]
    )
    kd = next(cb for cb in cli.trainer.callbacks if isinstance(cb, KnowledgeDistillation))
    teacher = kd.teacher.module
    assert isinstance(teacher, LogitEnsemble) and len(teacher.members) == 2
    torch.manual_seed(1)
    expected = ConvNet3(image_size=8).state_dict()
    assert all(torch.equal(teacher.members[1].state_dict()[k], v) for k, v in expected.items())
    assert kd.stats["distilled_steps"] == 3
    assert "train_loss_kd" in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"members": []}, ValueError, "`members` must hold at least one network"),
        (
            {"members": [torch.nn.Linear(2, 2)], "combine": "median"},
            ValueError,
            r"Unknown `combine` 'median'; allowed: \['logits', 'probabilities'\]",
        ),
        (
            {"members": [torch.nn.Linear(2, 2)], "combine": "probabilities", "temperature": 0},
            ValueError,
            "`temperature` must be a finite number > 0, got 0",
        ),
        (
            {"members": [torch.nn.Linear(2, 2), "lenet"]},
            TypeError,
            r"`members\[1\]` must be an nn.Module, got str",
        ),
        (
            {"members": [torch.nn.Linear(2, 2)] * 2, "checkpoints": ["a.ckpt"]},
            ValueError,
            r"`checkpoints` must give one file per member \(2\), got 1",
        ),
        (
            {"members": [torch.nn.Linear(2, 2)], "checkpoints": ["/nonexistent/m0.ckpt"]},
            FileNotFoundError,
            r"`checkpoints\[0\]` '/nonexistent/m0.ckpt' does not exist",
        ),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        LogitEnsemble(**kwargs)


def test_checkpoint_that_does_not_fit_its_member_is_named_by_position(tmp_path):
    torch.save(LeNet300100(in_features=64, hidden=(16, 8)).state_dict(), tmp_path / "small.pt")
    torch.save(LeNet300100(in_features=64, hidden=(32, 8)).state_dict(), tmp_path / "wide.pt")
    members = _members(2)
    with pytest.raises(
        ValueError, match=r"`checkpoints\[1\]` .*wide.pt' does not fit the architecture LeNet300100"
    ):
        LogitEnsemble(members, checkpoints=[tmp_path / "small.pt", tmp_path / "wide.pt"])


def test_members_with_other_output_shapes_are_an_error_at_forward():
    ensemble = LogitEnsemble([LeNet300100(in_features=64), LeNet300100(in_features=64, num_classes=5)])
    assert not hasattr(ensemble, "num_classes")
    with pytest.raises(ValueError, match=r"members\[0\]: \(2, 10\), members\[1\]: \(2, 5\)"):
        ensemble(torch.randn(2, 64))
