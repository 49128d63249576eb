"""Data sets: where they live on disk, how they are verified and downloaded, and the train/eval splits."""

from .splits import Split, load_splits

__all__ = ["Split", "load_splits"]
