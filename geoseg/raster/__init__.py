"""Raster I/O: reading scenes (GDAL env, open, mirrored windows, block cache, the reader thread),
scene strings resolved (VRT, band files, STAC), map mosaics, and COGs written (sinks, tiles, TIFF bytes)."""
