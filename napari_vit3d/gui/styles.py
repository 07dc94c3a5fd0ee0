"""How plugin labels layers look: colours and a features table from the label table (an explanation map's
colormap comes with its method, ``explain.methods``)."""

from __future__ import annotations

from napari.utils.colormaps import DirectLabelColormap


def labels_colormap(table, hidden=()) -> DirectLabelColormap:
    """A direct colormap with the table's colours; indices in ``hidden`` (and 0) are transparent.

    Label values not in the table are drawn white, so a stray value painted by hand stays visible.
    """
    colors = {None: (1.0, 1.0, 1.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for e in table:
        if e.index == 0:
            continue
        colors[e.index] = (0.0, 0.0, 0.0, 0.0) if e.index in hidden else tuple(e.color)
    return DirectLabelColormap(color_dict=colors)


def labels_features(table) -> dict:
    """A features table (``index`` column = label value) so the status bar shows the label's name."""
    return {"index": [e.index for e in table], "name": [e.name for e in table]}
