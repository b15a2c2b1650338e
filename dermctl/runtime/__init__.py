"""What every training and evaluation command runs on, with no knowledge of methods or protocols: the
device, precision and loader processes; DDP helpers; signals and stop flags; checkpoints with verified
hashes; early stopping; per-iteration schedules. `train/` and `eval/` both build on it (docs/architecture.md)."""
