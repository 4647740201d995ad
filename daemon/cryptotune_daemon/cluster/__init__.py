"""The Ray cluster as the daemon sees it: its nodes and who holds them (``inventory``), and whether
every node runs the daemon's versions (``versions``).

Ray is imported lazily, inside the functions that talk to it: a daemon started without
``--ray-address`` never loads it. Nothing here imports torch, transformers or peft.
"""
