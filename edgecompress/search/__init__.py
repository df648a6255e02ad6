"""`compress search`: spend an accuracy or latency budget over image size, pruning, precision and fine-tuning,
measured in the target's runtime (edgecompress.search.search), on Ray or in this process (trials)."""
