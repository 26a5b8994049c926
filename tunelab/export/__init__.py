"""Export a tuned model: merged HF weights, GGUF files."""
