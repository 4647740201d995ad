"""Facts about the machines of a Ray cluster the daemon is attached to (no Ray import here)."""
