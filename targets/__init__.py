"""Runtimes (one runner each behind one interface) and, later, device profiles."""
