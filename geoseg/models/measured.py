"""What ``geoseg models`` lists for the built-in architectures at their default arguments:
output stride, measured receptive-field radius, parameter count and build warnings.

Measuring them takes seconds per architecture (minutes for some on a busy CPU), so the
listing reads them from here; tests/test_models.py checks every entry against the
measurement (:func:`measure`). Other arguments or band counts are measured when asked for.
This module imports neither torch nor the architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

#: bands and classes the table's parameter counts are for (``geoseg models`` defaults)
IN_CHANNELS = 3
NUM_CLASSES = 2


@dataclass(frozen=True)
class Measured:
    """One architecture at its defaults: stride, receptive-field radius (None: global pooling),
    parameters, and the warnings building it gives."""

    stride: int
    receptive_field: int | None
    params: int
    warnings: tuple[str, ...] = ()


DEFAULTS: dict[str, Measured] = {
    "deeplabv1": Measured(
        8,
        210,
        20_494_402,
        (
            "dilation schedule [2, 2, 2] for DeepLab v1 conv5 grids (its rates share the factor 2): outputs "
            "see their input through holes; use a sawtooth without a common factor, e.g. dilations='hdc' (1, 2, 5)",
        ),
    ),
    "deeplabv3plus": Measured(16, 533, 40_347_298),
    "fcn16s": Measured(32, 218, 134_282_372),
    "fcn32s": Measured(32, 218, 134_293_570),
    "fcn8s": Measured(32, 218, 134_279_878),
    "unet": Measured(16, 94, 7_763_074),
    "unet-small": Measured(8, 46, 482_754),
}


def measure(
    arch: str, in_channels: int = IN_CHANNELS, num_classes: int = NUM_CLASSES, **kwargs: object
) -> Measured:
    """Build ``arch`` and measure it (seconds; imports torch)."""
    import warnings

    from geoseg.errors import NonLocalError
    from geoseg.models import create_model, output_stride
    from geoseg.models.receptive_field import measure_receptive_field

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = create_model(arch, in_channels, num_classes, **kwargs)
    stride = output_stride(net)
    try:
        rf: int | None = measure_receptive_field(net, in_channels, stride)
    except NonLocalError:
        rf = None
    params = sum(p.numel() for p in net.parameters())
    return Measured(stride, rf, params, tuple(str(w.message) for w in caught))
