"""Images in: photos decoded by Pillow, resized, cropped and normalised as a model expects.

    fmt = image_format("imagenet")                                  # or image_format("none"), or overrides:
    fmt = image_format("imagenet", layout="NHWC", channel_order="BGR")
    fmt = format_for_model(fmt, model_input)                        # a ValueInfoProto, or a shape such as (None, 3, 224, 224)
    rows = read_images(["cat.jpg", "photos/"], fmt, "input")        # rows.inputs["input"]: (N, 3, 224, 224) float32
                                                                    # rows.images: what the model saw, uint8

The steps, in this order (those of torchvision's ``Resize``, ``CenterCrop``, ``ToTensor`` and ``Normalize``
on a PIL image):

1. decode with Pillow and convert to ``RGB`` (or ``L`` for a one-channel model); the first frame of an
   animation; no EXIF rotation is applied (as ``PIL.Image.open`` gives the pixels);
2. resize (bilinear, Pillow's antialiasing): ``size`` an int resizes the shorter side to it and keeps the aspect
   ratio (the longer side ``int(size * long / short)``, as torchvision computes it), ``size`` ``(H, W)`` resizes
   to exactly that, ``None`` keeps the image's size;
3. centre crop ``crop`` ``(H, W)`` (top ``int(round((h - H) / 2))``, left likewise); ``None``: no crop. A crop
   larger than the resized image is an error (torchvision would pad with zeros);
4. ``x * scale`` (1/255: pixels in [0, 1]), then ``(x - mean) / std`` per channel when they are given;
5. channel order ``RGB`` or ``BGR`` (``mean`` and ``std`` are always written in R, G, B order and follow the
   channels), layout ``NCHW`` or ``NHWC``, the model input's float dtype.

Presets (:data:`PRESETS`): ``imagenet`` (resize 256, crop 224, ImageNet's mean and std, NCHW, RGB) and
``none`` (no resize, no crop, pixels scaled to [0, 1], no mean/std; then every image must have one size).

:func:`format_for_model` fits a format to the model's input before any image is read: what the model fixes
(the channel count, the layout when its channel axis is plain, the image size, the dtype) is filled in where
the format was not given explicitly, and any contradiction is a ``ValueError`` naming both shapes.  A model
fixing ``H x W`` different from the preset's crop gets a crop of its size, and the resize keeps the preset's
ratio of resize to crop: ``imagenet`` on a 112 x 112 model resizes the shorter side to
``round(112 * 256 / 224) = 128`` and crops 112 x 112 (a non-square ``H x W`` resizes the shorter side to
``round(max(H, W) * 256 / 224)``, so the crop always fits).  A one-channel model reads the images as grey
(``L``), with the preset's mean and std averaged over its three channels.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import numpy as np

from . import Rows

#: the file suffixes read as images (lower case)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
_FLOAT_DTYPES = ("float16", "float32", "float64")


def _pil():
    """Pillow's Image module, or an error naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError as e:
        from ..errors import MissingExtraError
        raise MissingExtraError('reading images needs Pillow, which is not installed: pip install "onnxplain[viz]"') \
            from e
    return Image


# ---------------------------------------------------------------------- the format
@dataclass(frozen=True)
class ImageFormat:
    """How images become a model's input tensor (see the module's docstring for the steps).

    size: resize; an int (the shorter side, aspect ratio kept), ``(H, W)`` (exactly), or ``None`` (no resize).
    crop: centre crop ``(H, W)`` (an int: square), or ``None``.
    mean, std: per channel, in R, G, B order (one value: every channel), applied after ``scale``; ``None``: none.
    layout: ``NCHW`` or ``NHWC``.  channel_order: ``RGB`` or ``BGR``.  scale: the pixels' factor (1/255).
    channels: 3 (colour) or 1 (grey, Pillow's ``L``).  dtype: the tensor's float dtype.
    explicit: the fields :func:`format_for_model` must not adapt to the model (a mismatch is then an error);
        ``None`` (a format built directly): all of them; :func:`image_format` records the overrides given.
    """

    size: int | tuple | None = None
    crop: tuple | None = None
    mean: tuple | None = None
    std: tuple | None = None
    layout: str = "NCHW"
    channel_order: str = "RGB"
    scale: float = 1 / 255
    channels: int = 3
    dtype: str = "float32"
    explicit: frozenset | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "size", _size(self.size, "size", allow_int=True))
        set_(self, "crop", _size(self.crop, "crop", allow_int=False))
        set_(self, "mean", _per_channel(self.mean, "mean"))
        set_(self, "std", _per_channel(self.std, "std"))
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0, got {self.std}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 3 (colour) or 1 (grey), got {self.channels!r}")
        if str(np.dtype(self.dtype)) not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_FLOAT_DTYPES)}, got {self.dtype!r}")
        set_(self, "dtype", str(np.dtype(self.dtype)))
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, self.channels):
                raise ValueError(f"{name} has {len(values)} values for images of {self.channels} channel(s)")
        names = {f.name for f in fields(self)} - {"explicit"}
        if self.explicit is not None:
            unknown = set(self.explicit) - names
            if unknown:
                raise ValueError(f"explicit names unknown fields {sorted(unknown)}")
            set_(self, "explicit", frozenset(self.explicit))
        else:
            set_(self, "explicit", frozenset(names))

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(H, W)`` of the tensor made from an image of ``width x height`` pixels."""
        if self.crop is not None:
            return self.crop
        return resized_size(width, height, self.size)[::-1]

    def describe(self) -> str:
        """One line: the steps of this format."""
        size = ("no resize" if self.size is None else f"resize shorter side {self.size}" if isinstance(self.size, int)
                else f"resize {self.size[0]}x{self.size[1]}")
        crop = "no crop" if self.crop is None else f"crop {self.crop[0]}x{self.crop[1]}"
        norm = "" if self.mean is None and self.std is None else f", mean {self.mean}, std {self.std}"
        return (f"{size}, {crop}, scale {self.scale:.6g}{norm}, {self.layout}, "
                f"{'grey' if self.channels == 1 else self.channel_order}, {self.dtype}")


def _size(value, what: str, allow_int: bool):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{what} must be positive, got {value!r}")
        return int(value) if allow_int else (int(value), int(value))
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and all(p >= 1 and p == v for p, v in zip(pair, value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must be an int or (height, width) of positive ints, got {value!r}")
    return pair


def _per_channel(value, what: str):
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value,)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(np.isfinite(values)):
        raise ValueError(f"{what} must be one number or one per channel (R, G, B), got {value!r}")
    return values


#: named formats; :func:`image_format` picks one and overrides its fields
PRESETS = {
    "imagenet": ImageFormat(size=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                            explicit=frozenset()),
    "none": ImageFormat(explicit=frozenset()),
}


def image_format(preset: str = "imagenet", **overrides) -> ImageFormat:
    """The preset ``preset`` (a name of :data:`PRESETS`) with ``overrides`` of its fields (``size``, ``crop``,
    ``mean``, ``std``, ``layout``, ``channel_order``, ``scale``, ``channels``, ``dtype``); overrides given
    (not ``None``) are explicit: :func:`format_for_model` keeps them and refuses a model they contradict."""
    if preset not in PRESETS:
        raise ValueError(f"unknown image preset {preset!r}: one of {', '.join(PRESETS)}")
    names = {f.name for f in fields(ImageFormat)} - {"explicit"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown image format field(s) {unknown}: the fields are {', '.join(sorted(names))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    base = PRESETS[preset]
    derived = {}
    if given.get("channels") == 1 and base.channels == 3:   # grey: the preset's statistics averaged
        derived = {k: v for k, v in _grey_statistics(base).items() if k not in given}
    return replace(base, **derived, **given, explicit=base.explicit | frozenset(given))


def image_format_from_text(preset: str | None = None, *, size: str | None = None, crop: str | None = None,
                           mean: str | None = None, std: str | None = None, layout: str | None = None,
                           channel_order: str | None = None) -> ImageFormat | None:
    """An :class:`ImageFormat` from the command line's text (``--size 256`` or ``256,320``, ``--mean a,b,c``);
    ``None`` when nothing was given (the default preset then applies to images)."""
    given = dict(size=size, crop=crop, mean=mean, std=std, layout=layout, channel_order=channel_order)
    if preset is None and all(v is None for v in given.values()):
        return None
    return image_format(preset or "imagenet", size=_parse_numbers(size, "--size", int, (1, 2), scalar=True),
                        crop=_parse_numbers(crop, "--crop", int, (1, 2), scalar=False),
                        mean=_parse_numbers(mean, "--mean", float, (1, 3)),
                        std=_parse_numbers(std, "--std", float, (1, 3)),
                        layout=None if layout is None else layout.upper(),
                        channel_order=None if channel_order is None else channel_order.upper())


def _parse_numbers(text, flag: str, kind, counts: tuple, scalar: bool = False):
    if text is None:
        return None
    try:
        values = [kind(v) for v in str(text).replace("x", ",").split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        form = {int: "H or H,W" if len(counts) == 2 else "N", float: "one number or R,G,B"}[kind]
        raise ValueError(f"{flag} expects {form}, got {text!r}")
    if len(values) == 1:
        return values[0] if (scalar or kind is float) else (values[0], values[0])
    return tuple(values)


def _grey_statistics(fmt: ImageFormat) -> dict:
    """The mean and std of a colour format for grey images: their averages over the channels."""
    return {k: None if v is None else (float(np.mean(v)),) for k, v in (("mean", fmt.mean), ("std", fmt.std))}


# ---------------------------------------------------------------------- fitting a format to the model's input
def input_shape(info) -> tuple:
    """The static dims of a model input: a ValueInfoProto (``None`` for a symbolic dim) or a shape as given."""
    if hasattr(info, "type") and hasattr(info.type, "tensor_type"):
        dims = info.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return tuple(None if d is None or isinstance(d, str) or int(d) <= 0 else int(d) for d in info)


def _input_dtype(info):
    if hasattr(info, "type") and hasattr(info.type, "tensor_type"):
        from onnx import helper
        return np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
    return None


def format_for_model(fmt: ImageFormat | str, info) -> ImageFormat:
    """``fmt`` fitted to a model input (a ValueInfoProto, or a shape such as ``(None, 3, 224, 224)``).

    The input must be rank 4 (and float, for a ValueInfoProto).  Filled from the model where ``fmt`` does not
    fix them explicitly: the layout (when only one of axes 1 and 3 is 1 or 3), the channel count (1: grey, the
    mean and std averaged), the dtype, and the crop (a model's fixed ``H x W``; the resize keeps the preset's
    ratio of resize to crop).  Whatever the format then fixes and the model fixes must agree: otherwise a
    ``ValueError`` names the model's shape and the format's.
    """
    if isinstance(fmt, str):
        fmt = image_format(fmt)
    shape = input_shape(info)
    name = getattr(info, "name", None)
    what = f"the model's input {name!r}" if name else "the model's input"
    if len(shape) != 4:
        raise ValueError(f"{what} has shape {_shape_text(shape)}: images feed a rank-4 input (N, C, H, W) or "
                         f"(N, H, W, C)")
    dtype = _input_dtype(info)
    changes = {}
    if dtype is not None:
        if str(dtype) not in _FLOAT_DTYPES:
            raise ValueError(f"{what} is {dtype}: images feed a floating-point input")
        changes["dtype"] = str(dtype)
    layout = fmt.layout
    if "layout" not in fmt.explicit:
        layout = _layout_of(shape) or layout
    changes["layout"] = layout
    c_axis, (h_axis, w_axis) = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    channels = shape[c_axis]
    if channels is not None and channels != fmt.channels:
        if channels not in (1, 3) or "channels" in fmt.explicit:
            raise ValueError(f"{what} has shape {_shape_text(shape)}: {channels} channel(s) on its {layout} channel "
                             f"axis, but the image format gives {fmt.channels} ({fmt.describe()}); images are read "
                             f"as RGB (3 channels) or grey (1)")
        changes["channels"] = channels
        if channels == 1:
            for key, value in _grey_statistics(fmt).items():
                if key in fmt.explicit and value is not None and len(getattr(fmt, key)) != 1:
                    raise ValueError(f"{what} has 1 channel (shape {_shape_text(shape)}) but the image format's "
                                     f"{key} has {len(getattr(fmt, key))} values")
                if key not in fmt.explicit:
                    changes[key] = value
    model_size = (shape[h_axis], shape[w_axis])
    if None not in model_size:
        changes.update(_fit_size(fmt, model_size, what, shape))
    try:
        return replace(fmt, **changes)
    except ValueError as e:
        raise ValueError(f"{what} (shape {_shape_text(shape)}) and the image format ({fmt.describe()}) disagree: "
                         f"{e}") from None


def _layout_of(shape: tuple) -> str | None:
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return "NCHW" if first else "NHWC"
    return None


def _fit_size(fmt: ImageFormat, model_size: tuple, what: str, shape: tuple) -> dict:
    """The crop (and resize) giving the model's fixed ``H x W``, or an error when the format fixes another size.

    A format whose size follows each image (no crop, the shorter side resized or no resize) is left as it
    is: the tensor's size is checked against the model once the images' headers are read."""
    made = fmt.crop if fmt.crop is not None else (fmt.size if isinstance(fmt.size, tuple) else None)
    if made is None or made == tuple(model_size):
        return {}
    fixed_by = "crop" if fmt.crop is not None else "size"
    if fixed_by in fmt.explicit:
        raise ValueError(f"{what} has shape {_shape_text(shape)} (images of {model_size[0]}x{model_size[1]}) but "
                         f"the image format makes {made[0]}x{made[1]} ({fmt.describe()}): give a matching "
                         f"--{fixed_by}, or leave the size to the preset")
    if fixed_by == "size":
        return {"size": tuple(model_size)}
    changes = {"crop": tuple(model_size)}
    if "size" not in fmt.explicit and isinstance(fmt.size, int):
        changes["size"] = int(round(max(model_size) * fmt.size / max(fmt.crop)))
    return changes


def check_tensor_shape(tensor_shape: tuple, info) -> None:
    """A ``ValueError`` naming both shapes when images read as ``tensor_shape`` cannot feed the model input."""
    shape = input_shape(info)
    name = getattr(info, "name", None)
    what = f"the model's input {name!r}" if name else "the model's input"
    bad = len(shape) != len(tensor_shape) or any(m is not None and m != t for m, t in zip(shape[1:], tensor_shape[1:]))
    if bad:
        raise ValueError(f"{what} has shape {_shape_text(shape)} but the images make {_shape_text(tensor_shape)}: "
                         f"resize or crop them to the model's size (--size/--crop, or the imagenet preset)")


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


# ---------------------------------------------------------------------- which files
def is_image_path(path) -> bool:
    """Whether ``path`` names an image file by its suffix (or is a folder, read as its image files)."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        return os.path.isdir(path) or path.lower().endswith(IMAGE_SUFFIXES)
    return False


def image_files(paths) -> list[str]:
    """The image files named by ``paths`` (one path or several): files as given, folders as their image files
    sorted by name (other files and subfolders in a folder are ignored).  A missing path, a file that is not
    an image by its suffix, a folder without images are errors naming them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            inside = sorted(e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
            images = [os.path.join(path, n) for n in inside if n.lower().endswith(IMAGE_SUFFIXES)]
            if not images:
                seen = f" (it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})" if inside else ""
                raise ValueError(f"the folder {path!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}){seen}")
            found += images
        elif not path.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{path!r} is not an image file: images are {', '.join(IMAGE_SUFFIXES)} (or a folder "
                             f"of them)")
        elif not os.path.isfile(path):
            raise ValueError(f"no such image file {path!r}")
        else:
            found.append(path)
    if not found:
        raise ValueError("no images given")
    return found


# ---------------------------------------------------------------------- decoding
@contextmanager
def _opened(source, label: str):
    """``source`` (a path, bytes, or a PIL image) opened as a PIL image (its header read: size known); a file
    opened here is closed on leaving."""
    Image = _pil()
    if isinstance(source, Image.Image):
        yield source
        return
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(source)))
        else:
            image = Image.open(os.fspath(source))
    except Exception as e:
        from ..errors import one_line
        raise ValueError(f"cannot read {label!r} as an image: {one_line(e)}") from e
    with image:
        yield image


def _label(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    filename = getattr(source, "filename", "")
    return os.path.basename(filename) if filename else f"image {index}"


def resized_size(width: int, height: int, size) -> tuple[int, int]:
    """``(width, height)`` after the resize ``size`` (see :class:`ImageFormat`)."""
    if size is None:
        return width, height
    if isinstance(size, tuple):
        return size[1], size[0]
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def shown_image(image, fmt: ImageFormat, label: str = "image") -> np.ndarray:
    """One PIL image as the model sees it before scaling: converted, resized, centre cropped; uint8
    ``H x W x 3`` in R, G, B order (``H x W`` grey)."""
    Image = _pil()
    try:
        image.seek(0)
    except (AttributeError, EOFError, ValueError):
        pass
    try:
        img = image.convert("L" if fmt.channels == 1 else "RGB")
        w, h = resized_size(img.width, img.height, fmt.size)
        if (w, h) != img.size:
            img = img.resize((w, h), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)
    except Exception as e:
        from ..errors import one_line
        raise ValueError(f"cannot decode {label!r}: {one_line(e)}") from e
    if fmt.crop is None:
        return pixels
    ch, cw = fmt.crop
    if ch > h or cw > w:
        raise ValueError(f"{label!r} is {h}x{w} pixels after resizing, smaller than the crop {ch}x{cw}: resize it "
                         f"larger (--size)")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return np.ascontiguousarray(pixels[top:top + ch, left:left + cw])


def to_tensor(images: list, fmt: ImageFormat) -> np.ndarray:
    """A batch of shown images (uint8, as :func:`shown_image` gives them) as the model's input tensor."""
    x = np.stack(images).astype(np.float64) * fmt.scale
    if x.ndim == 3:
        x = x[..., None]                                   # grey: one channel
    if fmt.mean is not None:
        x = x - np.asarray(fmt.mean)
    if fmt.std is not None:
        x = x / np.asarray(fmt.std)
    if fmt.channel_order == "BGR":
        x = x[..., ::-1]
    if fmt.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=fmt.dtype)


class ImageSource:
    """Images decoded lazily, rows of the model's input tensor: an array-like with ``shape``, ``dtype``,
    ``len`` and slicing (``source[a:b]`` decodes images ``a`` to ``b``), which
    :func:`onnxplain.datasets.explain_dataset` streams batch by batch.

    Every image's header is read when the source is made (a file that is not an image fails then), and all
    must make one tensor size.  ``names``: each image's label (its file name).
    """

    def __init__(self, sources, fmt: ImageFormat):
        if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, (list, tuple)):
            sources = [sources]
        paths = [s for s in sources if isinstance(s, (str, os.PathLike))]
        if len(paths) == len(sources):
            sources = image_files(sources)
        elif paths:
            sources = [f for s in sources for f in (image_files(s) if isinstance(s, (str, os.PathLike)) else [s])]
        if not sources:
            raise ValueError("no images given")
        self.fmt = fmt
        self.sources = list(sources)
        self.names = [_label(s, k) for k, s in enumerate(self.sources)]
        sizes = {}
        for source, name in zip(self.sources, self.names):
            with _opened(source, name) as image:
                sizes.setdefault(fmt.output_size(*image.size), name)
        if len(sizes) != 1:
            (a, first), (b, second) = list(sizes.items())[:2]
            raise ValueError(f"the images make tensors of different sizes: {first!r} {a[0]}x{a[1]}, {second!r} "
                             f"{b[0]}x{b[1]}; resize or crop them to one size (e.g. --preset imagenet, or --size H,W)")
        h, w = next(iter(sizes))
        c = fmt.channels
        self.shape = (len(self.sources), c, h, w) if fmt.layout == "NCHW" else (len(self.sources), h, w, c)
        self.dtype = np.dtype(fmt.dtype)

    def __len__(self) -> int:
        return len(self.sources)

    def shown(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """The images ``start:stop`` as the model sees them (uint8, before scaling)."""
        shown = []
        for source, name in zip(self.sources[start:stop], self.names[start:stop]):
            with _opened(source, name) as image:
                shown.append(shown_image(image, self.fmt, name))
        return shown

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[int(index):int(index) + 1 or None][0]
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("an ImageSource is read by slices of rows (source[a:b])")
        start, stop, _ = index.indices(len(self))
        if stop <= start:
            return np.zeros((0,) + self.shape[1:], self.dtype)
        return to_tensor(self.shown(start, stop), self.fmt)

    def rows(self, input_name: str) -> Rows:
        """Every image decoded: :class:`~onnxplain.sources.Rows` of the input ``input_name``."""
        shown = self.shown()
        return Rows(inputs={input_name: to_tensor(shown, self.fmt)}, names=list(self.names), images=shown,
                    extra={"format": self.fmt})


def read_images(sources, fmt: ImageFormat | str, input_name: str) -> Rows:
    """Images as one model input: ``sources`` are paths of image files, folders (their image files, sorted),
    raw bytes or PIL images (one, or a list).  Rows.inputs ``{input_name: tensor}``; Rows.images the uint8
    images the model saw (resized and cropped, not normalised); Rows.names their file names."""
    if isinstance(fmt, str):
        fmt = image_format(fmt)
    return ImageSource(sources, fmt).rows(input_name)
