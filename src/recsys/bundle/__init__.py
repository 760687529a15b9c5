"""The model bundle: one versioned, checksummed directory that serving and batch jobs read."""
