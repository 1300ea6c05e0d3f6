"""The one place where pixelexp relies on how Optuna works inside, not only on its documented use.

A sweep runs exactly `n_trials` trials however many workers share its study: the study
holds that many queued (WAITING) trials, and a worker only ever takes a queued one.
`Study.ask()` (and so `Study.optimize`) takes a queued trial when there is one but
creates a new trial when the queue is empty, and looking at the queue before asking
races with the other workers: two workers that both see the last queued trial both ask,
and one of them adds a trial past `n_trials`. So a worker takes a queued trial itself,
the way `Study.ask()` does it, minus the new trial:

- `claim_queued_trial` moves a WAITING trial to RUNNING with the storage's public
  `set_trial_state_values`, documented to succeed for one caller only (it returns False
  for a trial already RUNNING and raises UpdateFinishedTrialError for a finished one).
- `trial_object` builds the `optuna.trial.Trial` that `Study.ask()` would return. The
  class is public, but Optuna's documentation advises against calling its constructor,
  so it may change without notice: pyproject.toml bounds Optuna to the major version this
  was checked against. The constructor calls `study.sampler.before_trial`, which is why a
  worker sets the trial's own seeded sampler between the two calls.
"""

from __future__ import annotations


def claim_queued_trial(study, storage, study_id: int) -> tuple[int, int] | None:
    """Take one queued trial for this worker -> (trial id, trial number); None when none is queued.

    `storage` is the storage object the study was opened on; the storage hands each
    queued trial to one caller only, whichever process or thread asks."""
    import optuna
    states = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(states.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, state=states.RUNNING):
                return trial_id, trial.number
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker took it and finished it
            continue
    return None


def trial_object(study, trial_id: int):
    """The `optuna.trial.Trial` of a claimed trial, to suggest, report and `study.tell` with."""
    import optuna
    return optuna.trial.Trial(study, trial_id)


__all__ = ["claim_queued_trial", "trial_object"]
