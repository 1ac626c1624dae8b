"""Training scripts for the small checkpoints shipped in facedeid/checkpoints/."""
