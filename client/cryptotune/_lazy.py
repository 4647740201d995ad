"""Modules imported on first use, so a command loads only the code its work needs."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it on first attribute access.

    Unlike ``importlib.util.LazyLoader`` nothing is put in ``sys.modules`` early: the module is
    imported the ordinary way, once, when first needed. So a generated ``*_pb2`` module that
    another proto depends on is always fully built before its dependants (protobuf's descriptor
    pool requires that), whichever code imports it first.

    Annotate the name with the real module under ``TYPE_CHECKING``::

        if TYPE_CHECKING:
            from cryptotune.proto.v1 import gpu_pb2
        else:
            gpu_pb2 = LazyModule("cryptotune.proto.v1.gpu_pb2")
    """

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<LazyModule {self._name!r} ({state})>"
