"""Infrastructure: the local embedded stack, images and deployment."""
