"""Stage runners (one per pipeline stage) and the stage map."""
