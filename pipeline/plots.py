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
    """Draw uint8 images (N×C×H×W) in a square grid, each with its caption."""
    count = len(images)
    columns = max(1, int(np.ceil(np.sqrt(count))))
    rows = max(1, int(np.ceil(count / columns)))
    figure, grid = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.4), squeeze=False)
    for position, axes in enumerate(grid.flat):
        axes.axis("off")
        if position >= count:
            continue
        image = images[position].permute(1, 2, 0).numpy()
        if image.shape[2] == 1:
            axes.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            axes.imshow(image, interpolation="nearest")
        axes.set_title(captions[position], fontsize=7)
    figure.suptitle(title if count else f"{title} (none)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
