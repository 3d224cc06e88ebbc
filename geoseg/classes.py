"""Facts about class values that training, models and outputs share: the label value meaning
"not labelled" and the colours classes get when nobody names one. Imports nothing of geoseg but
its errors, so every layer can use it."""

from __future__ import annotations

#: Label value meaning "not labelled" when the user names none (``--ignore-value``), and the
#: class index training's loss ignores (not labelled, and image nodata).
IGNORE_VALUE = 255
