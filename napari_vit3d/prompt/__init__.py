"""Click-prompted segmentation: a promptable 3D transformer on a crop around the user's clicks.

Public API::

    from napari_vit3d.prompt import PromptSession, load_prompt_model
    s = PromptSession(load_prompt_model(), volume)     # the bundled segformer3d-prompt
    s.add_point(world=(x, y, z))                       # positive; positive=False for a negative click
    mask = s.predict().mask                            # Volume, uint8 0/1 on the scan's own grid
    s.add_point(world=(...), positive=False); mask = s.predict().mask

``clicks`` holds the simulated user and the click encoding, ``crop`` the crop geometry, ``session``
the session. Nothing here imports Qt or napari.
"""

from .clicks import dice, farthest_point, next_click
from .crop import Crop, make_crop
from .session import (
    DEFAULT_PROMPT_MODEL,
    PromptResult,
    PromptSession,
    list_prompt_models,
    load_prompt_model,
    prompt_models_dir,
)

__all__ = ["Crop", "DEFAULT_PROMPT_MODEL", "PromptResult", "PromptSession", "dice", "farthest_point",
           "list_prompt_models", "load_prompt_model", "make_crop", "next_click", "prompt_models_dir"]
