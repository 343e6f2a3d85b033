"""The identity-consistent inpainting model, its inference pipeline and its training loop."""
