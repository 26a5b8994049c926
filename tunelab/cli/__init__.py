"""The `tunelab` command (typer): one module per command group."""
