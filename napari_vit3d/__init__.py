"""napari-vit3d: 3D transformer segmentation and explanation for napari.

The engine (``io``, ``models``, ``inference``, ``explain``, ``review``, ``training``) never imports Qt or
napari; ``gui`` and the npe2 adapters (``_napari``) do.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the number lives once, in pyproject.toml; an installed (or editable) copy carries it in its metadata
    __version__ = version("napari-vit3d")
except PackageNotFoundError:  # a bare source tree on sys.path, never installed
    __version__ = "0+unknown"
