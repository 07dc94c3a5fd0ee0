"""napari_vit3d.training"""
