"""napari-vit3d: 3D transformer segmentation and explanation for napari.

The engine (``io``, ``models``, ``inference``, ``explain``, ``review``, ``training``) never imports Qt or
napari; ``gui`` and the npe2 adapters (``_napari``) do.
"""

__version__ = "0.1.0"
