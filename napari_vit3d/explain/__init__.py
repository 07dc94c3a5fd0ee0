"""napari_vit3d.explain"""
