"""The images: Imagenette's folders and the generated part-whole scenes, cached as uint8 arrays.

- `data`: image folders, the uint8 image cache, Imagenette, the stratified holdout
- `synthetic`: the generated part-whole scenes of the embedded profile
"""
from .data import ImageSet, dataset_root, image_cache, list_images
from .synthetic import SceneStyle, generate

__all__ = ["ImageSet", "SceneStyle", "dataset_root", "generate", "image_cache", "list_images"]
