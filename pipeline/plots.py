"""PNG figures logged with each trial: the confusion matrix and a grid of dev errors.

Both are drawn with PIL rather than matplotlib: a trial draws several figures,
and laying out a matplotlib figure costs a few hundred milliseconds each, a large
share of a short trial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Ends of the white-to-blue colour scale of the confusion-matrix cells, in RGB.
LIGHT = np.array([247, 251, 255])
DARK = np.array([8, 48, 107])


def confusion_matrix_png(confusion: np.ndarray | list, class_names: list[str], path: Path, title: str) -> Path:
    """Draw the confusion matrix with counts in each cell; rows are true classes, columns predicted ones.

    Cell colour grows with the count. Counts are written while there are at most 30
    classes; above that the cells get too small to read them.
    """
    from PIL import Image, ImageDraw, ImageFont

    matrix = np.asarray(confusion, dtype=np.int64)
    classes = len(class_names)
    font = ImageFont.load_default(size=11)
    if classes <= 10:
        cell = 34
    elif classes <= 30:
        cell = 22
    else:
        cell = 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max((probe.textlength(name, font=font) for name in class_names), default=0)) + 8
    margin, title_height = 8, 22
    left = margin + 16 + label_width  # room for the "true" axis title and the row labels
    top = title_height + margin
    grid = cell * classes
    bottom = top + grid + label_width + 20  # column labels, turned 90 degrees, then the "predicted" axis title
    width = max(left + grid + margin, int(probe.textlength(title, font=font)) + 2 * margin)
    canvas = Image.new("RGB", (width, bottom + margin), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 4), title, fill="black", font=font)

    peak = max(int(matrix.max()), 1) if matrix.size else 1
    for (row, column), count in np.ndenumerate(matrix):
        share = count / peak
        colour = tuple(int(value) for value in LIGHT + (DARK - LIGHT) * share)
        x, y = left + column * cell, top + row * cell
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
        if classes <= 30:
            text = str(count)
            text_width = draw.textlength(text, font=font)
            draw.text((x + (cell - text_width) / 2, y + cell / 2 - 6), text, font=font,
                      fill="white" if share > 0.5 else "black")
    draw.rectangle((left - 1, top - 1, left + grid, top + grid), outline="black")

    for index, name in enumerate(class_names):
        name_width = draw.textlength(name, font=font)
        draw.text((left - 4 - name_width, top + index * cell + cell / 2 - 6), name, fill="black", font=font)
        label = Image.new("RGB", (int(name_width) + 2, 14), "white")
        ImageDraw.Draw(label).text((0, 0), name, fill="black", font=font)
        turned = label.rotate(90, expand=True)
        canvas.paste(turned, (int(left + index * cell + cell / 2 - 7), top + grid + 4))
    draw.text((left + grid / 2 - 25, bottom - 16), "predicted", fill="black", font=font)
    axis = Image.new("RGB", (30, 14), "white")
    ImageDraw.Draw(axis).text((0, 0), "true", fill="black", font=font)
    canvas.paste(axis.rotate(90, expand=True), (margin, int(top + grid / 2 - 15)))
    canvas.save(path)
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
