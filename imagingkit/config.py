"""The one settings object of imagingkit.

Values come from keyword arguments, else from ``IMAGINGKIT_*`` environment variables,
else from defaults. There is no other mutable module state (DESIGN.md, ``config``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imagingkit.errors import ConfigError

__all__ = ["Settings", "default_data_dir", "get_settings"]


def default_data_dir() -> Path:
    """Return the default folder for sandbox data and the cache.

    ``$IMAGINGKIT_DATA_DIR``, else ``$XDG_CACHE_HOME/imagingkit``, else
    ``~/.cache/imagingkit``.
    """
    env = os.environ.get("IMAGINGKIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "imagingkit"


@dataclass(frozen=True)
class Settings:
    """imagingkit settings.

    Attributes
    ----------
    data_dir : Path
        Where the sandbox keeps generated data and its indexes.
    timeout : float
        Seconds before a network request is abandoned.
    concurrency : int
        Upper bound on concurrent requests to one server.
    max_upload_bytes : int
        Largest STOW-RS request body the embedded DICOMweb store accepts (413 beyond).
    max_query_limit : int
        Largest QIDO ``limit`` the embedded store honours; larger values are capped.
    host : str
        Interface the servers bind to; loopback unless the user asks otherwise.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    timeout: float = 30.0
    concurrency: int = 8
    max_upload_bytes: int = 2 * 1024**3
    max_query_limit: int = 10_000
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from ``IMAGINGKIT_<FIELD>`` variables, then *overrides*.

        Raises
        ------
        ConfigError
            If an environment variable cannot be converted to its field's type.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"IMAGINGKIT_{f.name.upper()}")
            if raw is None:
                continue
            try:
                if f.name == "data_dir":
                    values[f.name] = Path(raw).expanduser()
                elif f.type in ("float", float):
                    values[f.name] = float(raw)
                elif f.type in ("int", int):
                    values[f.name] = int(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ConfigError(
                    f"IMAGINGKIT_{f.name.upper()}={raw!r} is not a valid {f.type}"
                ) from exc
        settings = cls(**values)
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = Path(clean["data_dir"]).expanduser()
        return replace(settings, **clean)


def get_settings(**overrides: Any) -> Settings:
    """Return the settings from the environment with *overrides* applied."""
    return Settings.from_env(**overrides)
