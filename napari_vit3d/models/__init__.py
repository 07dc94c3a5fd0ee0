"""napari_vit3d.models"""
