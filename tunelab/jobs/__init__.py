"""Fine-tuning jobs: the server's worker and the client that runs a job from runner.train()."""
