"""One run from start to finish: its folder (`rundir`), its tracking (MLflow, the outage
journal, provenance), `run(config)` and resuming a killed run."""
