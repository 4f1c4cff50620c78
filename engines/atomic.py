"""Write folders atomically: build in a private temp folder, then publish and rename into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def publish(directory: Path, executables: tuple[str, ...] = ()) -> None:
    """Ordinary permissions for a finished folder (mkdtemp and some writers create files private)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        executable = path.is_dir() or path.name in executables
        os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder into place; an old one (``--force``) goes only after the new one is there."""
    backup = None
    if target.exists() or target.is_symlink():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, backup)
    os.rename(tmp, target)
    if backup is not None:
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink()
