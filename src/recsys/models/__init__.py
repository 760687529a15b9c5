"""Plain torch modules (no Lightning, Hydra or Ray): towers and layers."""
