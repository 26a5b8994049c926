"""Fine-tuning: training data, shipped data sets, the recipe (setup -> loop -> save)."""
