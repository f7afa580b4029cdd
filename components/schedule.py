"""The train loop's schedule: where the next call of steps ends, and what falls due at a step."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Pure step arithmetic, so the loop reads as "run, then act on what is due".

    A call of steps never crosses an epoch end or a checkpoint, sample or summary mark: the
    host sees every step at which something is due. Intervals of 0 are off."""
    steps_per_epoch: int
    total: int                            # the last step: epochs * steps_per_epoch, or max_steps
    steps_per_call: int
    checkpoint_every: int = 0             # steps
    checkpoint_every_epochs: int = 0
    sample_every: int = 0
    summary_every: int = 0

    @classmethod
    def of(cls, p, n_train: int) -> Schedule:
        """From the train stage's Params and the number of training examples."""
        steps_per_epoch = math.ceil(n_train / p.batch_size)
        total = p.epochs * steps_per_epoch
        if p.max_steps:
            total = min(total, p.max_steps)
        return cls(steps_per_epoch, total, p.steps_per_call, p.checkpoint_every, p.checkpoint_every_epochs,
                   p.sample_every, p.summary_every)

    @property
    def _marks(self) -> tuple[int, ...]:
        return (self.checkpoint_every, self.checkpoint_every_epochs * self.steps_per_epoch,
                self.sample_every, self.summary_every)

    def call_size(self, step: int) -> int:
        """How many steps the call starting after `step` runs: up to the nearest mark."""
        marks = [self.total, (step // self.steps_per_epoch + 1) * self.steps_per_epoch]
        marks += [(step // every + 1) * every for every in self._marks if every > 0]
        return min(min(marks) - step, self.steps_per_call)

    def epoch_index(self, step: int) -> int:
        """The 0-based epoch the step after `step` belongs to (the data stream's epoch)."""
        return step // self.steps_per_epoch

    def epoch(self, step: int) -> int:
        """The 1-based epoch that step `step` ends in (the log's and progress.json's)."""
        return (step - 1) // self.steps_per_epoch + 1

    def epoch_end(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0 or step == self.total

    def summary_due(self, step: int) -> bool:
        return _due(step, self.summary_every) or step == self.total

    def sample_due(self, step: int) -> bool:
        return _due(step, self.sample_every) or self.epoch_end(step)

    def checkpoint_due(self, step: int) -> bool:
        return (_due(step, self.checkpoint_every) or _due(step, self.checkpoint_every_epochs * self.steps_per_epoch)
                or step == self.total)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0
