"""Model names -> weights: resolve a name, the embedded models, the registry of tuned models, the catalog."""
