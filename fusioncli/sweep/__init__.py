"""Sweeps: grid expansion, local execution with skip/resume, optional experiment tracking."""
