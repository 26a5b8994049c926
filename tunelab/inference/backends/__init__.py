"""Inference backends: one small interface (`Backend`), one file per engine."""
