"""Where a run's code came from: the commit and whether its tree was dirty, the diff of
uncommitted changes, and the installed distributions. Logged with every run so that a
number can be traced to the exact code and packages that produced it; reads git and
the interpreter's metadata only, so it talks to no tracking store."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout pixelexp runs from


def git_state() -> dict[str, str]:
    """Commit of the code that runs, and whether its tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.SubprocessError, OSError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def git_diff() -> str:
    """Uncommitted changes to tracked files ('' when clean or not a git checkout)."""
    try:
        return subprocess.run(["git", "diff", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ""


def pip_freeze() -> str:
    """name==version of every installed distribution (what `pip freeze` lists)."""
    from importlib import metadata
    seen = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={d.version}"
    return "\n".join(sorted(seen.values(), key=str.lower)) + "\n"


__all__ = ["REPO", "git_state", "git_diff", "pip_freeze"]
