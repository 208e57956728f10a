"""Library code of the feature-splatting toolkit. Importing it has no side effects."""
