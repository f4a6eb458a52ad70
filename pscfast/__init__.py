"""pscfast: photo-sketch dense correspondence (Lu, Wang, Fan, ICML 2023) on fused correspondence kernels.

    import pscfast
    pscfast.ops.warp(image, flow, out_size=(256, 256), padding_mode="border")

`python -m pscfast.info` reports what was built and which backend serves each op here.
"""
import warnings

from pscfast import _extension, ops  # noqa: F401 (registers the ops: `import pscfast` is enough to use them)

__version__ = "0.1.0"

if _extension.version_mismatch():
    warnings.warn(_extension.version_mismatch(), RuntimeWarning, stacklevel=2)
