"""manifold-edge: distill a ViT with the manifold loss, export, quantize and benchmark it."""
__version__ = "0.1.0"
