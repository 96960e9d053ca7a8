"""Importing the user's code named in a configuration: ``path/to/file.py:function``,
``package.module:function``, or a whole module (a plugin that registers components).

Importing runs the file's top-level code: point configs only at code you trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bayes_mbrl.errors import ConfigError

__all__ = ["import_user_module", "load_user_function"]


def _is_path(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def _import(target: str, spec: str, key: str) -> ModuleType:
    """Import a module given as a file path or a dotted name (errors name ``key``)."""
    try:
        if _is_path(target):
            path = Path(target)
            if not path.is_file():
                raise ConfigError(
                    f"{key} = {spec!r}: file {str(path)!r} not found (relative paths are "
                    f"taken from the working directory {os.getcwd()!r}); run from the "
                    "directory the config expects or give an absolute path"
                )
            module_name = f"bayes_mbrl_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(module_name)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(module_name, path)
                if module_spec is None or module_spec.loader is None:
                    raise ConfigError(f"{key} = {spec!r}: {str(path)!r} is not a Python file")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_name] = module
                try:
                    module_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
            return module
        return importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{key} = {spec!r}: importing {target!r} failed ({type(exc).__name__}: {exc})"
        ) from exc


def import_user_module(spec: str, key: str) -> ModuleType:
    """Import ``path/to/file.py`` (relative to the working directory) or ``package.module``.

    Raises:
        ConfigError: the file or module cannot be found or imported.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{key}: expected 'path/to/file.py' or 'package.module', got {spec!r}")
    return _import(spec, spec, key)


def load_user_function(spec: str, key: str) -> Callable[..., Any]:
    """Import the function named by ``path/to/file.py:function`` or ``package.module:function``.

    A file path is taken relative to the working directory. Importing runs the
    file's top-level code: point configs only at code you trust.

    Args:
        spec: where the function is.
        key: the config key it came from (for error messages).

    Raises:
        ConfigError: the file or module cannot be found or imported, or has no such
            callable.
    """
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ConfigError(f"{key} = {spec!r}: expected 'path/to/file.py:function'")
    module = _import(target, spec, key)
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"{key} = {spec!r}: {target!r} has no function {name!r}; its functions are {found}"
        )
    return fn
