"""Installing the FiftyOne plugin into a user's plugins directory.

The plugin's files (``plugin/`` in the repository) ship inside the package as
``noise_audit_plugin``. :func:`install_plugin` links (or copies) that folder
into ``fo.config.plugins_dir``, where the App and ``fiftyone operators list``
find it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import fiftyone as fo

from noise_audit.errors import NoiseAuditError

PLUGIN_NAME = "@noise-audit/noise-audit"
INSTALL_NAME = "noise-audit"


def plugin_source_dir() -> Path:
    """The folder holding the plugin's ``fiftyone.yml`` and ``__init__.py``."""
    spec = importlib.util.find_spec("noise_audit_plugin")
    if spec is None or not spec.submodule_search_locations:
        raise NoiseAuditError("The plugin files (package noise_audit_plugin) are not installed; reinstall noise-audit")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _is_ours(path: str | os.PathLike[str]) -> bool:
    yml = Path(path) / "fiftyone.yml"
    return yml.is_file() and PLUGIN_NAME in yml.read_text()


def install_plugin(plugins_dir: str | os.PathLike[str] | None = None, copy: bool = False,
                   overwrite: bool = False) -> Path:
    """Makes the plugin visible to FiftyOne.

    Args:
        plugins_dir: FiftyOne's plugins directory (default:
            ``fo.config.plugins_dir``, i.e. ``FIFTYONE_PLUGINS_DIR``).
        copy: copy the files instead of linking them (a link follows upgrades
            and editable installs; a copy survives uninstalling the package).
        overwrite: replace an earlier install of this plugin.

    Returns:
        the installed path ``<plugins_dir>/noise-audit``.
    """
    plugins_dir = Path(plugins_dir or fo.config.plugins_dir or Path.home() / "fiftyone" / "__plugins__").expanduser()
    source, target = plugin_source_dir(), plugins_dir / INSTALL_NAME
    if target.is_symlink() and target.resolve() == source and not copy:
        return target
    if target.exists() or target.is_symlink():
        if not _is_ours(target):
            raise NoiseAuditError(f"{target} exists and is not this plugin; remove it or choose another plugins_dir")
        if not overwrite:
            raise NoiseAuditError(f"The plugin is already installed at {target}; pass overwrite=True (--overwrite) to replace it")
        uninstall_plugin(plugins_dir)
    plugins_dir.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        os.symlink(source, target, target_is_directory=True)
    return target


def uninstall_plugin(plugins_dir: str | os.PathLike[str] | None = None) -> bool:
    """Removes the plugin from ``plugins_dir``; returns whether it was there."""
    plugins_dir = Path(plugins_dir or fo.config.plugins_dir or Path.home() / "fiftyone" / "__plugins__").expanduser()
    target = plugins_dir / INSTALL_NAME
    if target.is_symlink():
        target.unlink()
        return True
    if target.is_dir():
        if not _is_ours(target):
            raise NoiseAuditError(f"{target} is not this plugin; not removing it")
        shutil.rmtree(target)
        return True
    return False
