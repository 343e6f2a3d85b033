"""The identity-consistent inpainting model, its inference pipeline and its training loop."""

import logging

# diffusers' pipeline modules import `CLIPImageProcessor` and `SiglipImageProcessor`. Without
# torchvision (never installed: see docs/dependencies.md) transformers resolves those names to
# their PIL classes, which cameo uses anyway, and warns about it on every command. Only that
# module's import notices are silenced; every other transformers warning still shows.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
