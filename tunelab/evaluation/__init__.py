"""Evaluation: scoring answers, diagnostics (why an answer looks wrong), compare and its report."""
