"""Inference: the engine, generation options, chat templates, sampling, batching, typed output, backends."""
