"""Metadata keys, in one place: what the plugin stores in ``layer.metadata`` and ``Volume.metadata``.

Layers made by the plugin (``layer.metadata``):

* :data:`PLUGIN` (``"vit3d"``): the geometry and provenance block (``io.layers.layer_metadata``): affine,
  file shape, header, source path, name, kind, channel, provenance; writers rebuild files from it.
* :data:`RUN` (``"vit3d_run"``): the ``gui.session.RunRecord`` of the segmentation that made a labels layer.
* :data:`MAP` (``"vit3d_map"``): method and parameters of a map layer (explanation, probability, uncertainty).
* :data:`DIFF` (``"vit3d_diff"``): a "changes" layer (corrections against the model's labels).
* :data:`COMPARE` (``"vit3d_compare"``): a disagreement layer from Review › Compare.
* :data:`PROMPT` (``"vit3d_prompt"``): the click-to-segment preview layer (not a result).
* :data:`QUERY` (``"vit3d_query"``): the Explain query marker (Points).
* :data:`RECOVERED` (``"vit3d_recovered"``): a labels layer restored from an autosave (its saved info).
* :data:`LAYER_ID` (``"vit3d_layer_id"``): a labels layer's recovery id (a uuid; one recovery file per layer).

``Volume.metadata``: ``"kind"`` (a :class:`~napari_vit3d.io.volume.VolumeKind`), :data:`PROTECT_PATH`
(the scan file an output must never replace), ``"units"``, ``"method"``, and :data:`PLUGIN` (provenance).
"""

PLUGIN = "vit3d"
RUN = "vit3d_run"
MAP = "vit3d_map"
DIFF = "vit3d_diff"
COMPARE = "vit3d_compare"
PROMPT = "vit3d_prompt"
QUERY = "vit3d_query"
RECOVERED = "vit3d_recovered"
LAYER_ID = "vit3d_layer_id"
PROTECT_PATH = "protect_path"
KIND = "kind"

#: layers that are views of a result rather than results: never offered for export or as corrections
NOT_RESULTS = (DIFF, COMPARE, PROMPT)

__all__ = ["COMPARE", "DIFF", "KIND", "LAYER_ID", "MAP", "NOT_RESULTS", "PLUGIN", "PROMPT", "PROTECT_PATH", "QUERY",
           "RECOVERED", "RUN"]
