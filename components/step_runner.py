"""The step runner: the recipe's train step as one tf.function per step, several per host call."""
from __future__ import annotations

import signal

import numpy as np
import tensorflow as tf

from components import interrupt


class StepRunner:
    """Runs setup.step under the strategy and counts steps in step_var. The host reads the
    metrics once per call of up to n steps; a stop request ends a call at the next step
    boundary (after at least one step). `stopping()` says whether one was made: this process's
    own signal, or under multi_worker the stop every worker agreed on (`agreed_stop`)."""

    def __init__(self, setup, strategy, step_var, xla: bool, multi_worker: bool):
        self.names = setup.metrics
        self._strategy, self._step_var = strategy, step_var
        self._step_fn = tf.function(setup.step, jit_compile=True) if xla else setup.step
        self._one_step = tf.function(self._one)
        self.stopping = interrupt.requested
        if multi_worker:  # several processes: a stop is agreed, or the others hang in a collective
            self.stopping, self._one_step = agreed_stop(self._one_step)

    @property
    def step(self) -> int:
        return int(self._step_var.numpy())

    def _one(self, it, asked=None):
        strategy = self._strategy
        m = strategy.run(self._step_fn, args=(_per_replica(strategy, next(it)),))
        self._step_var.assign_add(1)
        out = tuple(tf.cast(strategy.reduce("MEAN", m[k], axis=None), tf.float32) for k in self.names)
        if asked is None:
            return out
        # how many workers were asked to stop (by SIGINT, by SIGTERM) before this step: one
        # all-reduce of two numbers, so every worker sees the same answer after the same step
        return out + (strategy.reduce("SUM", strategy.run(tf.identity, args=(asked,)), axis=None),)

    def run(self, it, n: int) -> dict[str, np.ndarray]:
        """Up to n steps dispatched back to back: {metric: one value per step run}."""
        outs = [self._one_step(it)]
        while len(outs) < n and not self.stopping():
            outs.append(self._one_step(it))
        return {k: tf.stack([o[i] for o in outs]).numpy() for i, k in enumerate(self.names)}


def _per_replica(strategy, batch):
    """A global batch as per-replica values: replica i gets the i-th contiguous slice."""
    r = strategy.num_replicas_in_sync
    if r == 1:
        return batch

    def part(ctx):
        i = ctx.replica_id_in_sync_group

        def cut(x):
            n = tf.shape(x)[0]
            return x[i * n // r:(i + 1) * n // r]
        return tf.nest.map_structure(cut, batch)
    return strategy.experimental_distribute_values_from_function(part)


def agreed_stop(one_step):
    """Multi-worker training: every worker stops at the same step, whichever got the signal.

    What tf.distribute.experimental.PreemptionCheckpointHandler does for MultiWorkerMirroredStrategy
    (docs/scaling-out.md says why it is not used): each step carries this worker's stop request
    into one all-reduce, and a stop is acted on only once the sum says some worker asked. The sum
    is the same on every worker after the same step, so all save that step and stop. Returns
    (stopping, one_step): the agreed signal after the last step (or None), and the step function
    that feeds it."""
    agreed: list = [None]

    def step(it):
        s = interrupt.requested()
        *out, asked = one_step(it, tf.constant([s == signal.SIGINT, s == signal.SIGTERM], tf.float32))
        sigint, sigterm = asked.numpy()
        if sigint or sigterm:  # this worker's own signal, else the one another worker got
            agreed[0] = s or (signal.SIGTERM if sigterm else signal.SIGINT)
        return tuple(out)

    return (lambda: agreed[0]), step
