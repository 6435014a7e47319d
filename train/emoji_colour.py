# Dominant colour of an emoji image on a white background, for the caption variants of
# train/train.py and the colour check of train/measure.py (one classifier for both).
import numpy as np

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown")


def pixel_classes(rgb):
    """Per pixel: index into COLOURS, or -1 for white, grey, black and faint pixels.
    rgb: uint8 [..., 3]."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    v, c = mx, mx - mn
    s = np.where(mx > 0, c / np.maximum(mx, 1e-6), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.zeros_like(mx)
    cc = np.maximum(c, 1e-6)
    h = np.where(mx == r, ((g - b) / cc) % 6, h)
    h = np.where(mx == g, (b - r) / cc + 2, h)
    h = np.where(mx == b, (r - g) / cc + 4, h)
    h = h * 60.0  # degrees
    cls = np.full(mx.shape, -1, np.int64)
    chroma = (s > 0.35) & (v > 0.25) & (c > 0.15)
    cls[chroma & ((h < 20) | (h >= 340))] = 0
    cls[chroma & (h >= 20) & (h < 42)] = 1
    cls[chroma & (h >= 42) & (h < 70)] = 2
    cls[chroma & (h >= 70) & (h < 170)] = 3
    cls[chroma & (h >= 170) & (h < 260)] = 4
    cls[chroma & (h >= 260) & (h < 340)] = 5
    # brown: a dark or dull red-orange-yellow (Noto's brown is 183,109,84: s 0.54, v 0.72)
    cls[chroma & (h < 50) & ((v < 0.62) | ((v < 0.8) & (s < 0.7)))] = 6
    return cls


def dominant(rgb, min_fraction=0.03):
    """The most frequent chromatic class of an image (uint8 [H, W, 3]), or None when fewer
    than min_fraction of the pixels are chromatic."""
    cls = pixel_classes(rgb).ravel()
    cls = cls[cls >= 0]
    if cls.size < min_fraction * rgb.shape[0] * rgb.shape[1]:
        return None
    return COLOURS[int(np.bincount(cls, minlength=len(COLOURS)).argmax())]
