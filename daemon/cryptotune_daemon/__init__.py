"""cryptotune daemon: owns the GPUs, queues and runs training pipelines, serves gRPC."""

__version__ = "0.1.0"
