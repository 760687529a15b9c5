"""LightningModules and DataModules: training wiring around the plain-torch models."""
