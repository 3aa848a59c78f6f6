"""NDArray plugins: stdarrays, ..."""
