"""PNG figures logged with each trial: the confusion matrix and a grid of dev errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def confusion_matrix_png(confusion: np.ndarray | list, class_names: list[str], path: Path, title: str) -> Path:
    """Draw the confusion matrix with counts in each cell; rows are true classes."""
    matrix = np.asarray(confusion)
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 10 else 0)
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(class_names) <= 30:
        cut = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > cut else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def image_grid_png(images: torch.Tensor, captions: list[str], path: Path, title: str) -> Path:
    """Tile uint8 images (N×C×H×W) into a square grid, each with up to two caption lines below it.

    Drawn with PIL rather than matplotlib subplots: a trial writes a grid per error
    category, and a 36-image subplot grid takes most of a second to lay out.
    """
    from PIL import Image, ImageDraw, ImageFont

    tile, caption_height, margin = 80, 26, 6
    count = len(images)
    columns = max(1, int(np.ceil(np.sqrt(count))))
    rows = max(1, int(np.ceil(count / columns)))
    font = ImageFont.load_default(size=11)
    width = max(columns * (tile + margin) + margin, 7 * len(title) + 2 * margin)
    height = 22 + rows * (tile + caption_height + margin) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 4), title if count else f"{title} (none)", fill="black", font=font)
    for position in range(count):
        row, column = divmod(position, columns)
        array = images[position].permute(1, 2, 0).numpy()
        picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).convert("RGB")
        picture = picture.resize((tile, tile), Image.NEAREST)
        x = margin + column * (tile + margin)
        y = 22 + row * (tile + caption_height + margin)
        canvas.paste(picture, (x, y))
        for line, text in enumerate(captions[position].split("\n")[:2]):
            while text and draw.textlength(text, font=font) > tile + margin:
                text = text[:-1]
            draw.text((x, y + tile + 1 + 12 * line), text, fill="black", font=font)
    canvas.save(path)
    return path
