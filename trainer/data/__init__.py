"""Dataset readers (C-MAPSS, SKAB, generic CSV), windowing and scalers."""
