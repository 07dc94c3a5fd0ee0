"""Exceptions shared by every layer of the package.

Every error a user can cause (a bad file, a checkpoint that does not match, a request that would not
fit in memory) is raised as a subclass of :class:`Vit3dError` with a plain one-line message that says
what is wrong and, where possible, what to do. The CLI prints it to stderr and exits non-zero; the GUI
shows it as a napari notification. Nothing else is caught and hidden.
"""


class Vit3dError(Exception):
    """Base class for errors that are the user's input, not a bug."""


class VolumeError(Vit3dError, ValueError):
    """A file or array cannot be used as a scan or label map (corrupt, wrong dimensions, ...)."""


class FileWriteError(Vit3dError, OSError):
    """The file system refused a write (no permission, disk full, name too long): one plain line, and
    still the ``OSError`` it came from for code that catches that (not a ``ValueError``: napari's save
    path would take a ``ValueError`` for "no writer" and drop the message)."""


class GeometryError(Vit3dError, ValueError):
    """Two volumes are not on the same grid, or an affine is unusable."""


class CheckpointError(Vit3dError, ValueError):
    """Weights cannot be loaded safely or do not match the architecture."""


class ModelError(Vit3dError, ValueError):
    """A model spec or bundle is invalid, or a model does not support a request."""


class ResourceLimitError(Vit3dError, MemoryError):
    """A request would not fit in memory; refused before anything is allocated."""


class Cancelled(Vit3dError):
    """A long operation was cancelled by the user; nothing was written."""


class VolumeWarning(UserWarning):
    """Something about the input was repaired or is doubtful (NaN voxels, values beyond float32, a scan too
    small for the model); the message says what."""


class UntrustedCodeError(ModelError):
    """A model would run code from a file the user has not trusted (a MONAI bundle's config is code:
    ``$`` expressions and ``_target_`` instantiations); refused before anything of it is evaluated."""


class ModelWarning(UserWarning):
    """Something about a model is doubtful but usable (the message says what)."""


class ResourceLimitWarning(UserWarning):
    """A request fits in memory, but only just (the message gives the estimate and the option to change)."""
