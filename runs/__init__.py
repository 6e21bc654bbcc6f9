"""What the entry points (train.py, eval.py, ...) share: set-up, building a run's objects from the
composed config, the run folder, reading checkpoints safely, DDP processes, and clear errors."""
