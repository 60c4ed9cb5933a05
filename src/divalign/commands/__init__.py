"""Command implementations: validate every input first, then create the run folder, then work."""
