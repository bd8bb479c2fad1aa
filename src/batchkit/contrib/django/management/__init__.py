"""batchkit's management commands."""
