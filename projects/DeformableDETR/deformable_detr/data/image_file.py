"""Opening an image file as every reader of this project sees it: training, evaluation, demo.py
and tools/deploy/onnx_predict.py.

Image: a PIL image of H x W pixels with 8 bits per channel, turned as its EXIF orientation says.

PIL keeps a 16-bit grayscale PNG, TIFF or PGM in a 16- or 32-bit integer mode, and its
convert("RGB") (what Detectron2's read_image does) clips every value above 255: such an image
comes out nearly all white. Here it is scaled to 8 bits as OpenCV's imread does (value >> 8),
and as PIL itself reads a 16-bit colour PNG. Images of floating-point or wider integer pixels
have no such scale and are refused.

This module imports only numpy and PIL: onnx_predict.py, which must run without torch and
Detectron2, loads it by its path.
"""

import numpy as np
from PIL import Image, ImageOps

__all__ = ["READ_ERRORS", "open_image"]

# what open_image raises for a file it cannot read: PIL's errors for broken files, and ours
READ_ERRORS = (OSError, ValueError, SyntaxError)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# PIL's 32-bit integer mode, in which it holds a 16-bit PGM: read as 16-bit when the values fit
INT32_MODE = "I"
FLOAT_MODE = "F"
UINT16_MAX = 65535


def _to_8bit(image: Image.Image, file_name: str) -> Image.Image:
    """image with 8-bit channels: 16-bit values scaled by 1/256 (truncated), 8-bit modes as
    they are."""
    if image.mode not in SIXTEEN_BIT_MODES + (INT32_MODE, FLOAT_MODE):
        return image
    pixels = np.asarray(image)
    low, high = pixels.min(), pixels.max()
    if image.mode == FLOAT_MODE or low < 0 or high > UINT16_MAX:
        raise ValueError(
            f"image {file_name!r} has {pixels.dtype} pixels (PIL mode {image.mode!r}, values "
            f"in [{low}, {high}]), which have no 8-bit scale: save it with 8 or 16 bits a "
            f"channel"
        )
    return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8))


def open_image(file_name) -> Image.Image:
    """The image in file_name (a path or a binary file) with 8 bits a channel, in its own PIL
    mode (convert it to the one wanted), turned by its EXIF orientation. Raises what PIL raises
    for a file it cannot read (OSError, e.g. PIL.UnidentifiedImageError) and ValueError for
    pixels with no 8-bit scale."""
    with Image.open(file_name) as image:
        image = ImageOps.exif_transpose(image)
        image.load()
        return _to_8bit(image, str(file_name))
