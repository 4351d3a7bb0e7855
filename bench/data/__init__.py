"""Dataset items, preprocessing and dataset loaders (manifests live in the top-level `datasets/`)."""
