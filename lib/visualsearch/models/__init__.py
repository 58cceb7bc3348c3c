"""Models of the four papers: embedding nets, face trunk and heads, MAAF and its baselines, CLIP VA/AF/RAF."""
