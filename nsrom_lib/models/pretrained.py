"""ImageNet weights from the torch hub cache only: never a download, always a clear error.

torchvision keeps downloaded weights in `torch.hub.get_dir()/checkpoints/<file>`. Where this
project runs there is no internet, so a missing file must fail at once with a message that
names the path and how to put the file there, instead of a download attempt that hangs.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["cached_weights_path", "load_cached_state"]

_URL = "https://download.pytorch.org/models/{}"


def cached_weights_path(filename: str) -> Path:
    """Where torchvision's weight file `filename` must be: `torch.hub.get_dir()/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_cached_state(filename: str, tv_call: str) -> dict[str, torch.Tensor]:
    """Load the state dict `filename` from the torch hub cache.

    tv_call: the torchvision call that downloads it on a machine with internet, for the message,
    e.g. "torchvision.models.vgg16(weights='IMAGENET1K_V1')".
    Raises FileNotFoundError naming the expected path and how to get the file.
    """
    path = cached_weights_path(filename)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path} (nothing is downloaded). "
            f"Copy the file {filename} there: download it from {_URL.format(filename)} "
            f"on a machine with internet access, or run `python -c \"import torchvision; "
            f"{tv_call}\"` there and copy it from that machine's torch hub cache "
            "(set TORCH_HOME or call torch.hub.set_dir to use another cache folder); "
            "or use pretrained=False."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # pickle errors subclass these or Exception
        raise ValueError(
            f"{path} is not a readable weights file ({type(e).__name__}: {str(e)[:200]}); "
            f"delete it and copy {filename} again from {_URL.format(filename)}."
        ) from e
    except Exception as e:  # e.g. pickle.UnpicklingError from a file of another kind
        raise ValueError(
            f"{path} is not a readable weights file ({type(e).__name__}); delete it and copy "
            f"{filename} again from {_URL.format(filename)}."
        ) from e
