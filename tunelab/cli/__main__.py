"""``python -m tunelab.cli``."""

from tunelab.cli.main import app

app()
