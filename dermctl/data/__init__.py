"""Data: manifests, data set adapters, image decoding and hashing, grouped splits, demo data."""
