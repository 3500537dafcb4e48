"""Models: training data, versions on disk, loading."""
