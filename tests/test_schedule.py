"""The train loop's schedule: pure step arithmetic, checked without TensorFlow."""
from __future__ import annotations

from components.schedule import Schedule


def calls(s: Schedule) -> list[int]:
    """The steps at which the loop's calls end, from step 0 to the total."""
    step, out = 0, []
    while step < s.total:
        step += s.call_size(step)
        out.append(step)
    return out


def test_a_call_ends_at_every_epoch_end_and_mark():
    s = Schedule(steps_per_epoch=7, total=20, steps_per_call=50, checkpoint_every=5, summary_every=0)
    assert calls(s) == [5, 7, 10, 14, 15, 20]
    assert [k for k in range(1, 21) if s.epoch_end(k)] == [7, 14, 20]  # the last, short epoch too
    assert [k for k in range(1, 21) if s.checkpoint_due(k)] == [5, 10, 15, 20]


def test_steps_per_call_caps_a_call():
    assert calls(Schedule(steps_per_epoch=10, total=10, steps_per_call=3)) == [3, 6, 9, 10]


def test_epoch_checkpoints_samples_and_summaries():
    s = Schedule(steps_per_epoch=4, total=12, steps_per_call=50, checkpoint_every=1000,
                 checkpoint_every_epochs=2, sample_every=3, summary_every=100)
    assert [k for k in range(1, 13) if s.checkpoint_due(k)] == [8, 12]
    assert [k for k in range(1, 13) if s.sample_due(k)] == [3, 4, 6, 8, 9, 12]
    assert [k for k in range(1, 13) if s.summary_due(k)] == [12]  # the total always
    assert (s.epoch(4), s.epoch(5), s.epoch_index(4), s.epoch_index(3)) == (1, 2, 1, 0)


class _P:
    batch_size, epochs, max_steps, steps_per_call = 32, 3, None, 50
    checkpoint_every, checkpoint_every_epochs, sample_every, summary_every = 1000, 0, 0, 100


def test_of_params_counts_partial_batches_and_caps_at_max_steps():
    assert (Schedule.of(_P, 100).steps_per_epoch, Schedule.of(_P, 100).total) == (4, 12)
    capped = type("Capped", (_P,), {"max_steps": 5})
    assert Schedule.of(capped, 100).total == 5
