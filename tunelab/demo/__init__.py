"""The lesson, run by `tunelab demo`."""
