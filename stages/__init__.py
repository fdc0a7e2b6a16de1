"""Pipeline stages (one module or package each) and the libraries they share (models, batches, training)."""
