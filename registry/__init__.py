"""The model registry: registration, versions, aliases, traffic splits, shadows, retention."""
