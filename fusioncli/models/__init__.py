"""Models: shared blocks, fusion operators, and the strategy registry."""
