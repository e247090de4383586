"""ComfyUI V3 nodes over `fishs2`. Importing this package is cheap: the engine and torch load inside `execute`."""
