"""The presets shipped in `sweep/presets/`: a spec file each, named by its file."""

from __future__ import annotations

from importlib import resources

import yaml


def _presets_dir():
    return resources.files("sweep") / "presets"


def preset_path(name: str):
    """The shipped preset file for `name` (it may not exist)."""
    return _presets_dir() / f"{name}.yaml"


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description with size and expected cost) for every shipped preset."""
    out = []
    for entry in sorted(_presets_dir().iterdir(), key=lambda e: e.name.removesuffix(".yaml")):
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text())
            out.append((entry.name.removesuffix(".yaml"), " ".join(doc["description"].split())))
    return out

