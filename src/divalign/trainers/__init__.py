"""Training loops: thin, read top to bottom, built from the pieces in models, generation, objectives."""
