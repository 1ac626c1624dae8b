"""Reading and writing images (and, in submodules, datasets and video) safely."""
