"""napari_vit3d.gui"""
