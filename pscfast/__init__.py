"""pscfast: photo-sketch dense correspondence (Lu, Wang, Fan, ICML 2023) on fused correspondence kernels.

    import pscfast
    pscfast.ops.warp(image, flow, out_size=(256, 256), padding_mode="border")

`python -m pscfast.info` reports what was built and which backend serves each op here.
"""
import importlib.util
import os
import warnings

# A source checkout built in place (`python setup.py build_ext --inplace`, nothing installed): setup.py maps the
# top-level kernels/ to pscfast.kernels only when it installs, so the checkout's root is searched for it too.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("pscfast.kernels") is None \
        and os.path.isfile(os.path.join(_CHECKOUT, "kernels", "__init__.py")) \
        and os.path.isfile(os.path.join(_CHECKOUT, "setup.py")):
    __path__.append(_CHECKOUT)

from pscfast import _extension, ops  # noqa: E402

__version__ = "0.1.0"

if _extension.version_mismatch():
    warnings.warn(_extension.version_mismatch(), RuntimeWarning, stacklevel=2)
