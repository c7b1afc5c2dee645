"""imagingkit: a Jupyter research environment for medical imaging on FHIR.

Quick start::

    $ imagingkit serve --sandbox --port 8042      # FHIR + DICOMweb sandbox on loopback

    >>> import imagingkit
    >>> bridge = imagingkit.connect(fhir="http://127.0.0.1:8042/fhir")
    >>> df = bridge.cohort().imaging(modality="CT").studies()
    >>> df.imaging.show()

See README.md for the notebooks and ARCHITECTURE.md for the map of the code.

Importing imagingkit stays light: the bridge, fhirpy, msgspec and the DICOMweb client
load on first use (PEP 562 ``__getattr__``), and the ``df.imaging`` pandas accessor is
registered as soon as pandas is imported (now, if it already is).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from imagingkit.errors import ImagingKitError

__version__ = "0.1.0"

__all__ = [
    "Bridge",
    "Cohort",
    "ImagingKitError",
    "__version__",
    "connect",
    "context",
    "from_provenance",
    "widgets",
]

if TYPE_CHECKING:
    from imagingkit import context, widgets
    from imagingkit.bridge import Bridge, connect, from_provenance
    from imagingkit.fhir.cohort import Cohort

_LAZY = {
    "Bridge": "imagingkit.bridge",
    "connect": "imagingkit.bridge",
    "from_provenance": "imagingkit.bridge",
    "Cohort": "imagingkit.fhir.cohort",
}


#: subpackages loaded on first attribute access (``imagingkit.context.current()``)
_SUBMODULES = {"context", "widgets"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"imagingkit.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imagingkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def _register_accessor() -> None:
    importlib.import_module("imagingkit.accessor")


class _AfterPandas(importlib.abc.MetaPathFinder):
    """Registers ``df.imaging`` right after ``import pandas`` finishes (no eager import)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "pandas":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self.inner.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _unhook()
        _register_accessor()


def _unhook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterPandas)]


if "pandas" in sys.modules:
    _register_accessor()
elif not any(isinstance(f, _AfterPandas) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterPandas())
