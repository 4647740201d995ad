"""The pipeline's stages, one module each; ``worker/pipeline.py`` runs them in order."""
