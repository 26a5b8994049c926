"""compare(): models x templates x prompts, diagnosed, with findings and a report."""
