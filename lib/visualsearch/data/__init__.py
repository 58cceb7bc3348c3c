"""Dataset readers for the papers' real formats and synthetic worlds written in those same formats."""
