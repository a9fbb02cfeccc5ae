"""User code named by a spec, `package.module:attribute` or `path/to/file.py:attribute`: reward functions, tools
and environments all load through here, so each way a spec can be wrong is one `UserError` prefixed with where the
spec came from (`where`, e.g. "reward 'f.py:f'" or "rollout.tools: 'f.py:f'")."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from rlqa.errors import UserError


def is_path(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def absolute_location(location: str, base_dir: Path | str | None) -> str:
    """A file location made absolute against base_dir (the recipe's directory); a module name as it is."""
    if not is_path(location):
        return location
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return str(path.resolve())


def load_attribute(spec: str, where: str, namespace: str) -> object:
    """What `location:attribute` names, dotted attributes followed. A file is imported once per path, as module
    `<namespace>_<stem>_<digest of the path>`, so that two recipes' "rewards.py" do not collide."""
    location, _, attribute = spec.rpartition(":")
    module = _import_file(where, Path(location), namespace) if is_path(location) else _import_module(where, location)
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(f"{where}: {location} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


def _import_module(where: str, name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UserError(f"{where}: no module named {exc.name!r}") from None
        raise UserError(f"{where}: importing {name} failed: {exc}") from None
    except Exception as exc:
        raise UserError(f"{where}: importing {name} failed: {type(exc).__name__}: {exc}") from None


def _import_file(where: str, path: Path, namespace: str):
    if not path.is_file():
        raise UserError(f"{where}: no such file {path}")
    module_name = f"{namespace}_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserError(f"{where}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    return module
