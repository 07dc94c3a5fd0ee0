"""napari_vit3d.inference"""
