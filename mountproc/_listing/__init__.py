"""_listing."""
