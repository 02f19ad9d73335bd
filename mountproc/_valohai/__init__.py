"""_valohai."""
