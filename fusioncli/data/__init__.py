"""Data: layout discovery and validation, LiDAR projection, the synth renderer, the cache."""
