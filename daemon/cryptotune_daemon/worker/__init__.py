"""The training worker: one process (or one per rank) per job, running the seven pipeline stages."""
