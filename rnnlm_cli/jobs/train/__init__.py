"""Training with truncated back-propagation through time, validation, schedules, early stopping and resume.

``train(config)`` writes two checkpoints: ``config.out`` always holds the model with the best
validation loss so far, and its companion ``<stem>.last<suffix>`` holds the latest state with
everything needed to continue (optimizer, random generators, position in the epoch). Validation
runs at the end of every epoch and, with ``valid_every`` N, after steps N, 2N, ... of each epoch; any
validation can give the best model. Every validation is also appended as one JSON line to
``<stem>.metrics.jsonl``.

The package, a module per concern:

- ``loop``: ``train()`` and the ``Trainer``: build the run, then epochs, then steps;
- ``budget``: the ``--max-time`` budget, the ``--save-every`` cadence and Ctrl-C / SIGTERM, on one clock;
- ``run``: the run's files, the state it saves, and ``plan_resume`` / ``ResumePlan`` to continue it;
- ``step``: the forward pass as a module, the optimizer with clipping, the learning-rate schedules;
- ``validation``: validation, and the gradient norms and hidden-state probe of ``--log-gradients``;
- ``report``: the progress bar, the line and record of each validation, the end of a run.

Started by ``torchrun`` with several processes, training is data-parallel (DistributedDataParallel,
gloo on CPUs, NCCL on GPUs): ``batch_size`` is the global batch and each process trains on its own
block of ``batch_size / processes`` streams; gradients are averaged, so the updates are those of one
process with the whole batch. Each process validates on its own line-aligned share of the validation
text (starting from a fresh state there) and the sums are reduced. Decisions to save or stop are taken
by all processes together after every step; rank 0 alone writes checkpoints, metrics and progress.

Directions: a ``backward`` model trains on the token stream reversed (it predicts each token from the
ones after it). A ``both`` model (biLM) trains its forward stack on the stream and its backward stack on
the reversed stream in the same step, the loss being the mean of the two. Validation scores each
direction as `rnnlm eval` does (the backward one line by line, each line reversed from a fresh state)
and the schedule follows their mean.
"""

from rnnlm_cli.jobs.train.loop import TrainResult, train
from rnnlm_cli.jobs.train.run import (
           ResumePlan,
           best_checkpoint_path,
           last_state_path,
           metrics_path,
           plan_resume,
)
from rnnlm_cli.jobs.train.step import gradient_norm

__all__ = ["ResumePlan", "TrainResult", "best_checkpoint_path", "gradient_norm", "last_state_path", "metrics_path",
           "plan_resume", "train"]
