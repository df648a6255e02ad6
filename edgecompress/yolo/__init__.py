"""The Ultralytics adapter: models (load, save, describe, export, evaluate), the dataset, training, and the block
rewrites pruning needs. Import the submodules; this package itself loads nothing heavy."""
