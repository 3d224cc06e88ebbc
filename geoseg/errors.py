"""Every error and warning class geoseg raises: one root, each also the builtin it resembles.

Categories: what the user gave (scene, output, option, model, job file, recipe, labels), what
failed while running (tile, scheduler, training), and internal signals (non-local network).
:func:`first_line` is the one way to shorten a message for a one-line report.
"""

from __future__ import annotations


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of an exception's message (its class name when it has none)."""
    text = exc if isinstance(exc, str) else str(exc)
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return "" if isinstance(exc, str) else type(exc).__name__


class GeosegError(Exception):
    """Root of every error geoseg raises on purpose; its message is one line a user can act on."""


# --- what the user gave ---------------------------------------------------------------------


class SceneError(GeosegError, OSError):
    """A scene cannot be opened or read (missing, not a raster, corrupt window)."""


class OutputError(GeosegError, OSError):
    """The output path cannot be written (exists, directory missing, not writable, clashes with
    another output or an input)."""


def write_failed(where: object, exc: OSError) -> OutputError:
    """A failed write (no space left, a quota, a permission) as one line naming the place; the
    caller has left the previous outputs as they were and removed its temporary files."""
    if isinstance(exc, OutputError):
        return exc
    import errno

    reason = exc.strerror or first_line(exc)
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some of your quota",
        errno.EFBIG: "the file system or a limit refuses files this large; write elsewhere",
        errno.EACCES: "check the permissions",
        errno.EROFS: "the file system is read-only; write elsewhere",
    }.get(exc.errno or 0, "check the folder")
    return OutputError(
        f"cannot write {where}: {reason}; {hint} and run again (the previous outputs are untouched)"
    )


class OptionError(GeosegError, ValueError):
    """An option's value is not one geoseg accepts (``--tta``, ``--precision``, CRF settings...)."""


class TilingError(OptionError):
    """Tile size, margin or stride do not fit together."""


class ModelError(GeosegError, ValueError):
    """Unknown model name, or a model that does not fit the scene or the device."""


class CheckpointError(ModelError):
    """A model file that is not a geoseg model, or that would need code execution to load."""


class OnnxWireError(CheckpointError):
    """Bytes that are not a well-formed ONNX protobuf (:mod:`geoseg.models.onnx_summary`)."""


class ChipError(GeosegError, ValueError):
    """Labels or chips folder do not fit the request."""


class EvaluationError(GeosegError, ValueError):
    """Prediction and reference cannot be compared."""


class VectorizeError(GeosegError, ValueError):
    """The raster cannot be polygonized as asked."""


class ResultsError(GeosegError, ValueError):
    """Class rasters, zones or tables cannot be counted or compared as asked (stats, change)."""


class JobError(GeosegError, ValueError):
    """The job file has problems; the message lists each with its place in the file."""


class RecipeError(JobError):
    """The recipe file is malformed; the message lists every problem with its place."""


# --- what failed while running -------------------------------------------------------------


class FolderLockedError(GeosegError, RuntimeError):
    """Another live geoseg run holds the output folder's lock."""


class JobLockedError(FolderLockedError):
    """Another run (of this job or another) is writing into the job's output folder."""


class ChipsLockedError(FolderLockedError, ChipError):
    """Another run is writing into the chips folder."""


class SchedulerError(GeosegError, ConnectionError):
    """The Dask scheduler cannot be reached, or was lost during a run."""


class TileError(GeosegError, RuntimeError):
    """One tile task could not be read or inferred; the message names the scene and window."""


class TrainingError(GeosegError, RuntimeError):
    """Training cannot start or continue."""


# --- internal signals ------------------------------------------------------------------------


class NonLocalError(GeosegError, RuntimeError):
    """A network's output depends on its whole input (global pooling): no finite receptive field."""


# --- warnings --------------------------------------------------------------------------------


class GeosegWarning(UserWarning):
    """Something was done, but not quite as asked (for example a scene without a CRS)."""


class GriddingWarning(GeosegWarning):
    """A dilation schedule that leaves holes in the receptive field (gridding)."""
