"""Lets PyPI's CUDA build of torchvision import beside a CPU-only torch.

Installed into ComfyUI's venv by scripts/install-comfyui.sh (through a .pth file). When `torchvision` is first
imported, torch.library.register_fake is wrapped so that registering a fake kernel for a torchvision operator
whose C library could not load is skipped instead of raising. The pure-Python parts that ComfyUI uses
(transforms) then work; calling a missing C operator (nms, roi_align...) still raises torch's own error.
"""
import importlib.abc
import sys


class _PatchOnTorchvisionImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch.library

        original = torch.library.register_fake

        def register_fake(op, *args, **kwargs):
            if isinstance(op, str) and op.startswith("torchvision::"):
                try:
                    torch._C._dispatch_has_kernel_for_dispatch_key(op, "Meta")
                except RuntimeError:  # the operator does not exist: its C library did not load
                    return None if args else (lambda fn: fn)
            return original(op, *args, **kwargs)

        torch.library.register_fake = register_fake
        return None  # let the normal finders import torchvision


sys.meta_path.insert(0, _PatchOnTorchvisionImport())
