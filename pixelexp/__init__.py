"""pixelexp: autoregressive pixel models (PixelRNN, PixelCNN), trained from YAML and
tracked in MLflow."""

__version__ = "0.1.0"
