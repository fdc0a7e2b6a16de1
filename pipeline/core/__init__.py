"""The engine's bottom layer: errors, config sections, atomic files, logging and progress, the run lock and the
stage interface. It imports nothing of the project's above it (tests/test_imports.py holds it to that), so
stages, backends and targets can all build on it."""
