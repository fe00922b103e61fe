"""The phase contract as a user reads it: states printed in plain words, and measurement labels that say what
the measurement holds (the callbacks' own words are tested with each callback)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from lightning_optim.callbacks.phases import (
    PhaseStates,
    describe_phases,
    model_is_changing,
    phase_states,
    phase_status,
    transition_label,
)


class Phase:
    """A phase with a fixed contract state and, optionally, its own words."""

    def __init__(self, name: str, state: str, words: str | None = None, steps: int | None = None) -> None:
        self.phase_name = name
        self.state = state
        self.words = words
        if steps is not None:
            self.phase_steps_done = steps

    def phase_state(self, trainer):
        return self.state

    def describe_phase(self, trainer, finished=False):
        return self.words


class Plain:
    """A phase of the bare contract: no words of its own."""

    def __init__(self, name: str, state: str) -> None:
        self.phase_name = name
        self.state = state

    def phase_state(self, trainer):
        return self.state


def trainer_with(*callbacks):
    return SimpleNamespace(callbacks=list(callbacks), current_epoch=3, max_epochs=8)


def test_states_print_as_plain_words_not_a_dict():
    t = trainer_with(
        Phase("pruning", "active", "running (pruning step 2 of 4, target 40%)"),
        Phase("distillation", "done", "running (epoch 3 of 5)"),  # the contract's "done", still distilling
        Plain("quantization", "pending"),
    )
    states = phase_states(t)
    # still the contract's dict: compared, copied and pickled as one
    assert states == {"pruning": "active", "distillation": "done", "quantization": "pending"}
    assert dict(states) == states and isinstance(states, dict)
    text = (
        "pruning: running (pruning step 2 of 4, target 40%); distillation: running (epoch 3 of 5); "
        "quantization: pending"
    )
    assert str(states) == f"{states}" == text == describe_phases(t)
    assert "{" not in f"held off: {states}" and "'done'" not in f"{states}"
    restored = pickle.loads(pickle.dumps(states))
    assert restored == states and str(restored) == text
    assert model_is_changing(t) and not model_is_changing(t, ignore=("pruning", "quantization"))


def test_words_without_a_description_and_at_the_end_of_training():
    t = trainer_with(Plain("a", "pending"), Plain("b", "active"), Plain("c", "done"), Phase("d", "done", ""))
    assert [phase_status(cb, t) for cb in t.callbacks] == ["pending", "running", "done", "done"]
    assert [phase_status(cb, t, finished=True) for cb in t.callbacks] == [
        "never started",
        "stopped before its end",
        "done",
        "done",
    ]
    assert describe_phases(trainer_with()) == "no compression phase" == str(PhaseStates({}))


def test_transition_labels_say_what_the_measurement_holds():
    """A row measured at the end of the epoch in which pruning began is already pruned: it reads "after the
    first pruning step", never "pruning starts"."""
    pruning = Phase("pruning", "active", "running (pruning step 1 of 4, target 35%)", steps=1)
    t = trainer_with(pruning)
    assert transition_label(t, "pruning", "active", "pending") == "after the first pruning step"
    pruning.phase_steps_done = 3  # three events in that epoch (unit="step")
    assert transition_label(t, "pruning", "active", "pending") == "after 3 pruning steps"
    pruning.state, pruning.words = "done", "done (target 80%)"
    assert transition_label(t, "pruning", "done", "active") == "pruning done"
    # distillation without an end: "done" for the contract from its first epoch, and still running
    kd = Phase("distillation", "done", "running (epoch 1 of 5)")
    t = trainer_with(kd)
    assert transition_label(t, "distillation", "done", "pending") == "after the first epoch of distillation"
    assert transition_label(t, "distillation", "done", "active") == "distillation schedule done"
    kd.words = "done"
    assert transition_label(t, "distillation", "done", "active") == "distillation done"
    # a phase of the bare contract, and one that is not on the trainer
    t = trainer_with(Plain("quantization", "active"))
    assert transition_label(t, "quantization", "active", "pending") == "after the first epoch of quantization"
    assert transition_label(t, "quantization", "pending", "active") == "quantization pending"
    assert transition_label(trainer_with(), "other", "done", "active") == "other done"
