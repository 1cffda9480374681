"""Where templates/, targets/ and firmware/ live: the checkout, or edgecomp/_data in a wheel."""

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder `name` (templates, targets or firmware) of this installation."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgecomp installation is missing its {name}/ folder (looked in {_PKG})")
