"""napari_vit3d.review"""
