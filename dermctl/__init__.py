"""dermctl: self-supervised pretraining and label-efficient evaluation for dermatology images."""

__version__ = "0.1.0"
