"""Training machinery that knows no run folders and no tracking store: the trainer and
its loop, fast paths, checkpoints, signals and distributed training."""
