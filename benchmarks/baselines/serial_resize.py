"""Today's script: the serial loop of Valohai's network-storage guide, written as a user would.

Walk the mounted source, open each image, resize it to 224x224, save it to an output folder,
then pack that folder with ``tar -cf`` so that Valohai uploads one file.

    python serial_resize.py SOURCE_DIR OUTPUT_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image


def main(source: str, outputs: str) -> None:
    """Resize every image under ``source`` into ``outputs/resized`` and tar that folder."""
    resized = os.path.join(outputs, "resized")
    os.makedirs(resized, exist_ok=True)
    for root, _dirs, files in os.walk(source):
        for name in files:
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            img = Image.open(os.path.join(root, name))
            small = img.resize((224, 224))
            small.save(os.path.join(resized, name))
    tar = os.path.join(outputs, "resized.tar")
    subprocess.run(["tar", "-cf", tar, "-C", outputs, "resized"], check=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
