"""Feed-forward style transfer (Johnson et al. 2016 with Ulyanov's instance norm).

`network` defines the transformation net, `train` fits it to one or several
styles on COCO (or any image folder) with the shared perceptual losses, and
`infer` applies a saved model to images.  Nothing here knows about Prefect or
MLflow.
"""

from .network import NetConfig, TransformNet, load_model, save_model

__all__ = ["NetConfig", "TransformNet", "load_model", "save_model"]
