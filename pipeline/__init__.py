"""manifold-edge: distill a ViT with the manifold loss, export, quantize and benchmark it."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """`from pipeline import run`: the Python API (pipeline/api.py), imported when first asked for."""
    if name == "run":
        from pipeline.api import run

        return run
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
