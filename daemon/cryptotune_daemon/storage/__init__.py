"""On-disk storage owned by the daemon (content-addressed uploads)."""
