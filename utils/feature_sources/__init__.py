"""2D feature sources that back-projection lifts onto the Gaussians (one module each)."""
