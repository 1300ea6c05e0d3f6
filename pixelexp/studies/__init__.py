"""Many runs compared: experiment files (variants), Optuna sweeps, and their reports."""
