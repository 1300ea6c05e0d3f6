"""Commands around runs and models: the benchmark, receptive fields, sampling a checkpoint."""
