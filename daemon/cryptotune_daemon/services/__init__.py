"""gRPC servicers: they translate proto ⇄ domain objects and nothing else."""
