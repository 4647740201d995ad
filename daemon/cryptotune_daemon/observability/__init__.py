"""What the daemon shows outside gRPC: Prometheus metrics, the web dashboard and its sign-in."""
