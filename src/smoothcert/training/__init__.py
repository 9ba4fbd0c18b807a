"""Base models, training objectives and the one train loop (images and clips)."""
