"""The whole-study progress line: which variant of how many, and the time left, from
each variant's timed first steps corrected by the epochs measured so far."""

import pytest

from pixelexp.studies import progress
from pixelexp.studies.progress import StudyClock, Variant, duration


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def now(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_the_time_left_follows_the_measured_pace(now):
    clock = StudyClock([Variant("rnn", 2, 2, 10.0), Variant("cnn", 2, 2, 20.0)])
    assert "roughly 60 s" in clock.estimate_line()  # 2 x 10 + 2 x 20
    clock.started("rnn")
    now.t += 20  # twice as slow as timed
    line = clock.epoch_done("rnn", 1)
    # rnn: 1 epoch at its own 20 s; cnn: 2 epochs at 20 s x (20 / 10)
    assert line == "study: variant 1/2 (rnn) epoch 1/2; 1/4 epochs in 20 s; about 1.7 min left"
    now.t += 20
    assert clock.epoch_done("rnn", 2).endswith("about 80 s left")
    clock.started("cnn")
    now.t += 30  # cnn is faster than the corrected guess: its own pace from now on
    assert clock.epoch_done("cnn", 1) == "study: variant 2/2 (cnn) epoch 1/2; 3/4 epochs in 70 s; about 30 s left"


def test_a_resumed_variant_counts_only_its_epochs_to_go(now):
    clock = StudyClock([Variant("a", 5, 5, 10.0)])
    clock.resumed("a", 3)
    assert clock.left() == pytest.approx(20.0)


def test_without_timings_the_time_left_waits_for_a_measurement(now):
    clock = StudyClock([Variant("a", 2, 2, None), Variant("b", 1, 1, None)])
    assert clock.estimate_line() == ""
    clock.started("a")
    now.t += 5
    assert clock.epoch_done("a", 1).endswith("time left not known yet")  # b was never timed


def test_durations_read_as_a_person_would():
    assert [duration(s) for s in (12, 300, 9000)] == ["12 s", "5.0 min", "2.5 h"]
