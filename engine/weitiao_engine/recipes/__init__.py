"""Training recipes, one per method, each readable top to bottom (setup / train / save_checkpoint / cleanup)."""
