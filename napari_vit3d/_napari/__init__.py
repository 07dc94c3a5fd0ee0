"""napari_vit3d._napari"""
