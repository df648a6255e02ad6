"""Structured pruning with torch-pruning: real channel (and block) removal, never masks. `pruner.prune` is the
stage's entry; criteria (importance.py) and allocations (allocation.py) are registries. Import the submodules;
this package itself loads nothing heavy."""
